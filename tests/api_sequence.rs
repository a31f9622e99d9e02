//! A randomized API-sequence harness: random sequences of submissions (nop, read, readv,
//! write, writev, write_frame, write_cursor, timeout, poll, fsync; valid and invalid) by
//! every completion route, cancels (with the ring's own ids and with ids of other rings),
//! deadlines (short, long and "never"), dropped tickets and futures, rings (tiny, SQPOLL
//! with a tiny SQ) dropped mid-flight with full completion queues, waits with huge
//! timeouts, RingHandle submissions from other threads (also after the ring is gone),
//! multishot readers sharing a pool, and continuous readers, split and DMA drivers and
//! FIFO receivers started, stopped and dropped — over a real file, a scratch file, a file
//! written at its position, an `O_APPEND` file, pipes, a directory, an eventfd and an
//! `O_PATH` descriptor.
//!
//! The oracle:
//! * every operation is delivered exactly once, by the route it was submitted with
//!   (counted per route), or — when its ticket/future was dropped, it was detached, or its
//!   ring was dropped with it in the ring's own FIFO — never; a queue holds, after its
//!   ring's drop, exactly the completions still owed to it (`len()` counts the overflow,
//!   `capacity()` does not change);
//! * an input refused before the kernel (offsets whose end passes `i64::MAX`, overflowing
//!   parts, wrong-kind targets, positional writes to an `O_APPEND` file, stale or foreign
//!   targets, ...) completes with exactly the expected error kind, without an
//!   `io_uring_enter`, with its buffers untouched and every file unchanged;
//! * a huge deadline never fires (the operation completes normally), a huge standalone
//!   timer ends only by a cancel, huge waits (run_once, run_wait, pool, queues) wait;
//! * a cancel with another ring's (or a dead ring's) `OpId` cancels nothing;
//! * every byte read matches the file (kept in memory: verify blocks), every record read
//!   from a pipe was written and is read at most once, and cancelled reads lose none;
//! * every write landed where it should (the scratch file is compared with a model; a
//!   cursor write lands at the file position and moves it by its length);
//! * each ring completes every operation it accepted (`submitted == completed`, no stale
//!   CQE), every pool slot is back once the ring is idle (dropped readers included) and at
//!   the end of every episode.
//!
//! Seeded: `IOCOMPLETE_API_SEQ_SEED=<n>` replays a run (the seed is printed at the start
//! and in every failure). `IOCOMPLETE_API_SEQ_OPS=<n>` sets the number of operations
//! (default 100 000), `IOCOMPLETE_API_SEQ_SECS=<n>` the time budget (default 150 s; a run
//! that cannot finish in it fails — a hang or a crawl is a finding too). A run that makes
//! no progress for `STALL` fails at once, printing its last actions.

mod common;

use common::or_skip;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use common::fd::{payload, pipe, set_nonblocking, write_fd};
use common::verify;
use iocomplete::dma::{DmaConfig, DmaOutcome, SgList};
use iocomplete::ring::BufPart;
use iocomplete::split::{Job, Mode, SplitConfig};
use iocomplete::Direction;
use iocomplete::Driver as _;
use iocomplete::{
    BufferPool, Bufs, Completion, CompletionQueue, ContinuousReader, DmaDriver, Error, ErrorKind,
    FdKind, FifoReceiver, FifoStatus, IoBuf, Op, OpFuture, OpId, PoolBuf, ReaderReport, Restart,
    Ring, RingHandle, SplitDriver, StreamReads, Target, Ticket,
};
// The trait, for `DmaDriver::process` (this file's own `Driver` is the harness's enum).

const BS: usize = 4096;
/// The verify file: read-only, `FILE_BLOCKS` blocks.
const FILE_BLOCKS: u64 = 64;
const FILE_SIZE: u64 = FILE_BLOCKS * BS as u64;
const FILE_SEED: u64 = 0x5E9_0E5C;
/// The scratch file: written at random, compared with a model.
const SCRATCH_BLOCKS: usize = 32;
/// Pipe records: 8-byte little-endian sequence numbers, read 8 bytes at a time.
const REC: usize = 8;
/// Tags of operations submitted through a RingHandle by another thread.
const HANDLE_BIT: u64 = 1 << 63;
/// The largest file position the kernel takes (`loff_t`).
const I64MAX: u64 = i64::MAX as u64;
/// Durations a kernel timer cannot hold, or only as "never": deadlines and timeouts of
/// these never fire, waits of these wait.
const HUGE: [Duration; 4] = [
    Duration::MAX,
    Duration::from_secs(u64::MAX),
    Duration::from_secs(1 << 63),
    Duration::from_secs(i64::MAX as u64),
];
/// A run that makes no progress for this long has hung: it fails, printing its last
/// actions (a ring's drop may take its 10 s grace; an episode's end waits 30 s at most).
const STALL: Duration = Duration::from_secs(60);
/// Cursor files: 0 is written at its position (moved at random between writes), 1 is
/// opened `O_APPEND` (positional writes refused, cursor writes land at its end).
const CURSOR: usize = 0;
const APPEND: usize = 1;

// ---- PRNG and configuration -------------------------------------------------------------

/// The tests' PRNG (seeded: a seed replays a run), with the choices this test makes.
#[derive(Debug, Clone)]
struct Rng(fastrand::Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(common::rng(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.u64(..)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.0.u64(..n)
        }
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    /// Index chosen by weight.
    fn weighted(&mut self, w: &[u64]) -> usize {
        let total: u64 = w.iter().sum();
        let mut x = self.below(total);
        for (i, &wi) in w.iter().enumerate() {
            if x < wi {
                return i;
            }
            x -= wi;
        }
        w.len() - 1
    }
}

/// `n` bytes of `file` from `off` (empty when `n` is 0, wherever `off` is).
fn file_at(file: &[u8], off: u64, n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    &file[off as usize..off as usize + n]
}

/// A hash of `z` (splitmix64's finalizer): content derived from tags, checkable later.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

// ---- the world: files, pools, totals ------------------------------------------------------

/// What lives across episodes.
struct World {
    _dir: tempfile::TempDir,
    dir_path: std::path::PathBuf,
    verify_path: std::path::PathBuf,
    scratch_path: std::path::PathBuf,
    /// The cursor file and the `O_APPEND` file, and what each must hold.
    cursor_paths: [std::path::PathBuf; 2],
    cursor_models: [Vec<u8>; 2],
    /// Ids of operations of rings dropped in earlier episodes (they name no operation of
    /// any live ring: a cancel with one must do nothing).
    old_ids: Vec<OpId>,
    /// The verify file's bytes.
    file: Arc<Vec<u8>>,
    /// What the scratch file must hold, and the blocks whose content is unknowable (a write
    /// whose completion was never seen, in a ring dropped mid-flight).
    model: Vec<u8>,
    unknown: Vec<bool>,
    /// What happened to each scratch block this episode (for failure messages).
    history: Vec<Vec<String>>,
    /// General pool (main thread and handle threads), a second geometry, and the pool the
    /// stream readers share.
    pools: [BufferPool; 3],
    totals: Totals,
}

#[derive(Debug, Default)]
struct Totals {
    ops: u64,
    episodes: u64,
    submitted: [u64; ROUTES],
    delivered: [u64; ROUTES],
    abandoned: u64,
    skipped_no_buffer: u64,
    cancels_hit: u64,
    ring_drops_mid_flight: u64,
    sqpoll_episodes: u64,
    handle_ops: u64,
    readers: u64,
    readers_dropped: u64,
    drivers: u64,
    /// Refused before the kernel, by what was wrong.
    refused: HashMap<&'static str, u64>,
    cursor_writes: u64,
    huge_deadlines: u64,
    never_timeouts: u64,
    huge_waits: u64,
    foreign_cancels: u64,
    /// Ring drops with completions in a queue's overflow list, and those completions.
    drops_with_overflow: u64,
    overflowed_at_drop: u64,
    tiny_sqpoll_episodes: u64,
    /// Submissions through a handle after its ring's drop.
    after_the_ring: u64,
    outcomes: HashMap<&'static str, u64>,
}

const ROUTES: usize = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Wait = 0,
    Ticket = 1,
    Then = 2,
    Queue = 3,
    Ring = 4,
    Future = 5,
    Detach = 6,
}

const ALL_ROUTES: [Route; ROUTES] = [
    Route::Wait,
    Route::Ticket,
    Route::Then,
    Route::Queue,
    Route::Ring,
    Route::Future,
    Route::Detach,
];

impl World {
    fn new() -> World {
        let (dir, verify_path) = common::disk_path("verify");
        verify::make_file(&verify_path, FILE_SIZE, BS, FILE_SEED);
        let file = Arc::new(std::fs::read(&verify_path).unwrap());
        let scratch_path = dir.path().join("scratch");
        let model: Vec<u8> = (0..SCRATCH_BLOCKS * BS).map(|i| (i % 251) as u8).collect();
        std::fs::write(&scratch_path, &model).unwrap();
        let cursor_paths = [dir.path().join("cursor"), dir.path().join("append")];
        for p in &cursor_paths {
            std::fs::write(p, b"").unwrap();
        }
        let mk = |slots, len, header| {
            BufferPool::builder()
                .slots(slots)
                .slot_len(len)
                .header_len(header)
                .build()
                .unwrap()
        };
        World {
            dir_path: dir.path().to_path_buf(),
            _dir: dir,
            verify_path,
            scratch_path,
            cursor_paths,
            cursor_models: [Vec::new(), Vec::new()],
            old_ids: Vec::new(),
            file,
            model,
            unknown: vec![false; SCRATCH_BLOCKS],
            history: vec![Vec::new(); SCRATCH_BLOCKS],
            pools: [mk(96, BS, 16), mk(16, 2 * BS, 0), mk(32, BS, 8)],
            totals: Totals::default(),
        }
    }

    fn check_pools(&self, when: &str) {
        for (i, p) in self.pools.iter().enumerate() {
            let st = p.stats();
            assert_eq!(st.free, st.total, "{when}: pool {i} slots leaked: {st:?}");
            assert_eq!(st.in_flight, 0, "{when}: pool {i} slots in flight: {st:?}");
        }
    }

    /// The scratch file holds the model, but in the blocks whose content is unknowable
    /// and those marked in `skip` (a write in flight).
    fn check_scratch(&self, when: &str, skip: &[bool]) {
        let f = File::open(&self.scratch_path).unwrap();
        let size = f.metadata().unwrap().len();
        assert_eq!(
            size,
            (SCRATCH_BLOCKS * BS) as u64,
            "{when}: scratch file size"
        );
        let mut now = vec![0u8; SCRATCH_BLOCKS * BS];
        f.read_exact_at(&mut now, 0).unwrap();
        for b in 0..SCRATCH_BLOCKS {
            if self.unknown[b] || skip.get(b) == Some(&true) {
                continue;
            }
            let r = b * BS..(b + 1) * BS;
            if now[r.clone()] != self.model[r.clone()] {
                let first = (r.start..r.end).find(|&i| now[i] != self.model[i]).unwrap();
                let last = (first..r.end)
                    .rev()
                    .find(|&i| now[i] != self.model[i])
                    .unwrap();
                panic!(
                    "{when}: scratch block {b} differs from the model at bytes {first}..={last} \
                     (file {:#04x}, model {:#04x}); its history this episode:\n  {}",
                    now[first],
                    self.model[first],
                    self.history[b].join("\n  ")
                );
            }
        }
    }
}

// ---- operations and their expectations -----------------------------------------------------

/// What an operation is, so its completion can be judged.
#[derive(Clone)]
enum Kind {
    Nop,
    /// Read of the verify file: `len` bytes at `off` (a single buffer), data area offset
    /// `at` (read_append).
    FileRead {
        off: u64,
        len: usize,
        at: usize,
    },
    /// Vectored read of the verify file: buffer lengths (readv), or parts (readv_parts).
    FileReadv {
        off: u64,
        lens: Vec<usize>,
        parts: Option<Vec<BufPart>>,
    },
    /// One 8-byte record from the main pipe.
    PipeRead,
    /// A write of `bytes` to the scratch file at `off` (single or vectored).
    ScratchWrite {
        off: u64,
        bytes: Vec<u8>,
    },
    /// A `write_cursor` of `bytes` to cursor file `f`, whose position was `pos` (one in
    /// flight per file: two would land in either order).
    CursorWrite {
        f: usize,
        pos: u64,
        bytes: Vec<u8>,
    },
    Timeout,
    /// `Op::timeout` of a huge duration: never fires, ends only by a cancel.
    NeverTimeout,
    /// POLLIN on the main pipe.
    Poll,
    /// POLLOUT on the eventfd (always writable).
    PollOut,
    /// fsync of the directory or the scratch file.
    Fsync,
    /// Refused before the kernel with the expected error; the fingerprints of its
    /// buffers, which must come back untouched.
    Invalid(&'static str, Expect, Vec<Fp>),
}

/// The error a refused operation must complete with.
#[derive(Clone, Copy)]
enum Expect {
    /// This kind exactly (numbers included).
    Exact(ErrorKind),
    /// `InvalidInput` whose reason contains this text ("" for any reason).
    Invalid(&'static str),
    /// `WrongTargetKind` for a target of this kind.
    WrongKind(FdKind),
    BufferTooSmall,
    Stale,
}

impl Expect {
    fn matches(self, k: &ErrorKind) -> bool {
        match (self, k) {
            (Expect::Exact(want), k) => *k == want,
            (Expect::Invalid(text), ErrorKind::InvalidInput { reason }) => reason.contains(text),
            (Expect::WrongKind(want), ErrorKind::WrongTargetKind { have, .. }) => *have == want,
            (Expect::BufferTooSmall, ErrorKind::BufferTooSmall { .. }) => true,
            (Expect::Stale, ErrorKind::StaleTarget) => true,
            _ => false,
        }
    }
}

impl std::fmt::Debug for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Exact(k) => write!(f, "{k:?}"),
            Expect::Invalid(t) => write!(f, "InvalidInput({t:?})"),
            Expect::WrongKind(k) => write!(f, "WrongTargetKind({k:?})"),
            Expect::BufferTooSmall => write!(f, "BufferTooSmall"),
            Expect::Stale => write!(f, "StaleTarget"),
        }
    }
}

/// A buffer's fingerprint: its length, a hash of its frame (header and data) and, for a
/// unique buffer, of its whole capacity.
type Fp = (usize, u64, Option<u64>);

/// Whether two fingerprints agree (capacities compared when both are known).
fn fp_same(a: &Fp, b: &Fp) -> bool {
    a.0 == b.0 && a.1 == b.1 && (a.2.is_none() || b.2.is_none() || a.2 == b.2)
}

fn hash_bytes(b: &[u8]) -> u64 {
    // FNV-1a over 8-byte words (fast enough in debug builds).
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x100_0000_01b3);
    }
    for &x in words.remainder() {
        h = (h ^ x as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn fp_pool(b: &mut PoolBuf) -> Fp {
    let f = hash_bytes(b.frame());
    (b.len(), f, Some(hash_bytes(b.capacity_mut())))
}

fn fp_shared(s: &iocomplete::SharedBuf) -> Fp {
    (s.len(), hash_bytes(s.frame()), None)
}

fn fp_io(b: &mut IoBuf) -> Fp {
    match b {
        IoBuf::Pool(p) => fp_pool(p),
        IoBuf::Shared(s) => fp_shared(s),
    }
}

/// The fingerprints of the buffers a completion gives back.
fn fp_bufs(b: &mut Bufs) -> Vec<Fp> {
    match b {
        Bufs::None => Vec::new(),
        Bufs::Pool(p) => vec![fp_pool(p)],
        Bufs::Shared(s) => vec![fp_shared(s)],
        Bufs::PoolList(v) => v.iter_mut().map(fp_pool).collect(),
        Bufs::List(v) => v.iter_mut().map(fp_io).collect(),
    }
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Nop => write!(f, "Nop"),
            Kind::FileRead { off, len, at } => write!(f, "FileRead(off {off}, len {len}, at {at})"),
            Kind::FileReadv { off, lens, parts } => {
                write!(f, "FileReadv(off {off}, lens {lens:?}, parts {parts:?})")
            }
            Kind::PipeRead => write!(f, "PipeRead"),
            Kind::ScratchWrite { off, bytes } => {
                write!(f, "ScratchWrite(off {off}, {} bytes)", bytes.len())
            }
            Kind::CursorWrite {
                f: file,
                pos,
                bytes,
            } => {
                write!(
                    f,
                    "CursorWrite(file {file}, pos {pos}, {} bytes)",
                    bytes.len()
                )
            }
            Kind::Timeout => write!(f, "Timeout"),
            Kind::NeverTimeout => write!(f, "NeverTimeout"),
            Kind::Poll => write!(f, "Poll"),
            Kind::PollOut => write!(f, "PollOut"),
            Kind::Fsync => write!(f, "Fsync"),
            Kind::Invalid(what, want, _) => write!(f, "Invalid({what}: {want:?})"),
        }
    }
}

/// An operation whose completion has not been seen.
#[derive(Debug)]
struct Pending {
    kind: Kind,
    route: Route,
    id: Option<OpId>,
    /// The queue it was sent to (route `Queue`).
    queue: usize,
    cancelled: bool,
    deadline: bool,
    /// Its deadline is huge: it must never fire.
    huge: bool,
    /// Its delivery was given up (ticket/future dropped, detached, or lost with its ring).
    abandoned: bool,
}

/// Per-thread totals of handle submissions, by route.
#[derive(Debug, Default)]
struct HandleCounts {
    submitted: [AtomicU64; ROUTES],
    /// Futures are awaited on the submitting thread.
    future_done: AtomicU64,
    outstanding: AtomicUsize,
}

/// The expectation of a handle operation is derived from its tag alone.
#[derive(Debug, Clone, Copy)]
enum HKind {
    Nop,
    Read { off: u64, len: usize },
    Invalid,
}

fn handle_kind(tag: u64) -> HKind {
    let h = mix(tag ^ 0xABCD);
    match h % 5 {
        0 | 1 => HKind::Nop,
        2 | 3 => HKind::Read {
            off: (h >> 8) % FILE_SIZE,
            len: 1 + ((h >> 32) % 600) as usize,
        },
        _ => HKind::Invalid,
    }
}

fn handle_op(tag: u64, t: Target, pool: &BufferPool) -> Option<Op> {
    Some(
        match handle_kind(tag) {
            HKind::Nop => Op::nop(),
            HKind::Read { off, len } => Op::read_len(t, off, pool.try_get().ok()?, len),
            HKind::Invalid => Op::read_len(t, 0, pool.try_get().ok()?, 0),
        }
        .tag(tag),
    )
}

/// Judge a handle operation's completion (any thread).
fn check_handle(c: &Completion, file: &[u8]) {
    let tag = c.tag();
    let cancelled = c.error().is_some_and(|e| e.is_cancelled());
    match (handle_kind(tag), c.result()) {
        (_, Err(e)) if e.is_cancelled() => {}
        (HKind::Nop, Ok(0)) => {}
        (HKind::Read { off, len }, Ok(n)) => {
            let want = len.min((FILE_SIZE - off) as usize);
            assert_eq!(n, want, "handle read {tag:#x}: byte count");
            match c.bufs() {
                Bufs::Pool(b) => assert!(
                    b.data() == &file[off as usize..off as usize + n],
                    "handle read {tag:#x}: bytes differ from the file at {off}"
                ),
                other => panic!("handle read {tag:#x}: buffers {other:?}"),
            }
        }
        (HKind::Invalid, Err(e)) if matches!(e.kind(), ErrorKind::ZeroLength { .. }) => {}
        (k, r) => panic!("handle op {tag:#x} ({k:?}): unexpected {r:?} (cancelled {cancelled})"),
    }
}

// ---- one episode: a ring and everything on it ------------------------------------------

/// A driver or reader started in the episode.
enum Driver {
    /// A continuous reader; its stream writer (pipes) and what it must deliver in total.
    Reader {
        reader: Box<dyn Drive>,
        writer: Option<Writer>,
        /// Bytes the reader must deliver when it runs to the end.
        expect: u64,
        got: Arc<AtomicU64>,
        /// Errors `on_failed` saw (none expected).
        fails: Arc<Mutex<Vec<Error>>>,
        /// Stopped before the end: delivers a prefix.
        stopped: bool,
    },
    Split {
        d: SplitDriver,
        off: u64,
        len: u64,
        h: ChunkCheck,
    },
    Dma {
        d: Box<DmaDriver>,
        extents: Vec<(u64, u64)>,
        /// The outcome and the list, once handed out.
        out: Option<(DmaOutcome, SgList)>,
    },
    Fifo {
        f: FifoReceiver,
        tx: OwnedFd,
        len: usize,
        sent: usize,
        stream: Vec<u8>,
    },
}

/// A continuous reader with its closures erased.
trait Drive {
    fn drive(&mut self, ring: &mut Ring) -> iocomplete::Result<Option<ReaderReport>>;
    fn debug(&self) -> String;
    fn cancel(&self);
    fn is_multishot(&self) -> bool;
}

impl Drive for ContinuousReader {
    fn drive(&mut self, ring: &mut Ring) -> iocomplete::Result<Option<ReaderReport>> {
        iocomplete::Driver::step(self, ring, Some(Duration::ZERO))
    }
    fn debug(&self) -> String {
        format!("{self:?}")
    }
    fn cancel(&self) {
        self.cancel_handle().cancel()
    }
    fn is_multishot(&self) -> bool {
        ContinuousReader::is_multishot(self)
    }
}

/// Checks every chunk a split read hands out against the file.
struct ChunkCheck {
    file: Arc<Vec<u8>>,
    bytes: Arc<AtomicU64>,
}

impl ChunkCheck {
    /// `d`, its chunks checked and counted.
    fn hook(&self, d: SplitDriver) -> SplitDriver {
        let (file, bytes) = (Arc::clone(&self.file), Arc::clone(&self.bytes));
        d.on_read(move |offset, buf| {
            let o = offset as usize;
            assert!(
                buf.data() == &file[o..o + buf.len()],
                "split chunk at {offset} differs from the file"
            );
            bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
            Ok(())
        })
    }
}

/// What the test thread watches: the last actions, and a counter that moves with every
/// action (a run whose counter stops has hung).
#[derive(Default)]
struct Shared {
    log: Mutex<VecDeque<String>>,
    /// The episode's start, and its driver and ring events (rarer than actions).
    events: Mutex<VecDeque<String>>,
    beat: AtomicU64,
}

impl Shared {
    /// What to print when a run fails or hangs.
    fn last_actions(&self) -> String {
        let ev: Vec<String> = self.events.lock().unwrap().iter().cloned().collect();
        let log: Vec<String> = self.log.lock().unwrap().iter().cloned().collect();
        format!(
            "the episode's events:\n  {}\nits last actions:\n  {}",
            ev.join("\n  "),
            log.join("\n  ")
        )
    }
}

/// A file written with `Op::write_cursor` (see [`CURSOR`], [`APPEND`]).
struct CursorFile {
    t: Target,
    /// The registered descriptor's open file, kept here too: the same file position.
    file: File,
    /// Where the position must be (the end of the model for the `O_APPEND` file).
    pos: u64,
    /// A cursor write in flight.
    busy: bool,
    /// A cursor write's completion will not be seen: content and position unknowable
    /// until the episode's end.
    unknown: bool,
}

impl CursorFile {
    fn position(&self) -> u64 {
        // SAFETY: lseek on a descriptor this test owns.
        let p = unsafe { libc::lseek(self.file.as_raw_fd(), 0, libc::SEEK_CUR) };
        assert!(p >= 0, "lseek: {}", std::io::Error::last_os_error());
        p as u64
    }
    fn size(&self) -> u64 {
        self.file.metadata().unwrap().len()
    }
}

/// A second ring with operations that only a cancel ends, in the same slots and
/// generations as the main ring's first ones: each ring is handed the other's ids.
struct OtherRing {
    ring: Ring,
    /// A pipe registered with it (a stale target for the main ring), and its write end.
    target: Target,
    _tx: OwnedFd,
    tickets: Vec<Ticket>,
    ids: Vec<OpId>,
}

struct Episode<'w> {
    w: &'w mut World,
    rng: Rng,
    shared: Arc<Shared>,
    ring: Option<Ring>,
    file_t: Target,
    scratch_t: Target,
    /// A target closed right after registration (stale).
    stale_t: Target,
    /// Wrong-kind targets: a directory, an eventfd, an `O_PATH` descriptor.
    dir_t: Target,
    efd_t: Target,
    opath_t: Target,
    cursors: [CursorFile; 2],
    other: Option<OtherRing>,
    /// Ids of this ring's first operations.
    early_ids: Vec<OpId>,
    /// Fingerprints of the buffers made for the refused operation being built.
    fps: Vec<Fp>,
    /// The queue the next submission by route `Queue` goes to (else one at random).
    force_queue: Option<usize>,
    /// A handle kept to submit through once the ring is gone.
    late_handle: Option<RingHandle>,
    /// Write ends of the pipes of dropped stream readers, kept open.
    silent: Vec<OwnedFd>,
    pipe_r: Target,
    pipe_tx: OwnedFd,
    /// A duplicate of the pipe's read end, to count what is left in it at the end.
    pipe_rx_dup: OwnedFd,
    /// Records written to the main pipe (numbered 0..), and those read back.
    records_written: u64,
    records_seen: HashSet<u64>,
    /// Pipe reads whose record may have been consumed without our seeing it.
    pipe_reads_unseen: u64,
    next_tag: u64,
    pending: HashMap<u64, Pending>,
    tickets: Vec<(u64, Ticket)>,
    futures: Vec<(u64, OpFuture)>,
    queues: Vec<Arc<CompletionQueue<Completion>>>,
    /// Their capacities when made (a full queue must not change them).
    queue_caps: Vec<usize>,
    sink: Arc<Mutex<Vec<Completion>>>,
    /// Scratch blocks with a write in flight (not to be written again until it is seen).
    busy: Vec<bool>,
    // Handle threads.
    handle_q: Arc<CompletionQueue<Completion>>,
    handle_sink: Arc<Mutex<Vec<Completion>>>,
    handle_seen: HashSet<u64>,
    handle_counts: Vec<Arc<HandleCounts>>,
    handle_stop: Arc<AtomicBool>,
    handle_threads: Vec<std::thread::JoinHandle<()>>,
    drivers: Vec<Driver>,
    ops_left: u64,
    sqpoll: bool,
}

fn noop_poll(f: &mut OpFuture) -> Option<Completion> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(f).poll(&mut cx) {
        Poll::Ready(c) => Some(c),
        Poll::Pending => None,
    }
}

impl<'w> Episode<'w> {
    fn new(w: &'w mut World, seed: u64, ops: u64, shared: Arc<Shared>) -> Episode<'w> {
        let mut rng = Rng::new(seed);
        let sqpoll = rng.chance(12);
        let mut b = Ring::builder();
        let mut tiny = false;
        match rng.below(6) {
            0 => b = b.entries(4).cq_entries(8),
            1 => b = b.entries(16).cq_entries(16),
            2 => b = b.entries(64),
            // Raised to 2 (an op and its deadline must fit together).
            3 => {
                tiny = true;
                b = b.entries(1 + rng.below(2) as u32)
            }
            // A CQ smaller than the SQ is raised to the SQ's size.
            4 => {
                tiny = true;
                b = b
                    .entries(1 << rng.below(4))
                    .cq_entries(1 + rng.below(4) as u32)
            }
            _ => {}
        }
        if sqpoll {
            b = b.sqpoll([1, 5, 50][rng.below(3) as usize]);
        }
        let mut ring = b.build().unwrap();
        // The builder raises a one-entry SQ to two and a CQ smaller than the SQ to its size.
        let caps = *ring.capabilities();
        assert!(
            caps.sq_entries >= 2 && caps.cq_entries >= caps.sq_entries,
            "ring sizes not raised: {caps:?}"
        );
        if sqpoll && tiny {
            w.totals.tiny_sqpoll_episodes += 1;
        }
        for p in &w.pools {
            if rng.chance(80) {
                let _ = ring.register_pool(p);
            }
        }
        let file_t = ring.register(File::open(&w.verify_path).unwrap()).unwrap();
        let scratch = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&w.scratch_path)
            .unwrap();
        let scratch_t = ring.register(scratch).unwrap();
        let stale_t = ring.register(File::open(&w.verify_path).unwrap()).unwrap();
        ring.close(stale_t).unwrap();
        let dir_t = ring.register(File::open(&w.dir_path).unwrap()).unwrap();
        // SAFETY: eventfd takes no pointers; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(efd >= 0, "eventfd: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor owned by nobody else.
        let efd_t = ring.register(unsafe { OwnedFd::from_raw_fd(efd) }).unwrap();
        let opath = common::open_o_path(&w.scratch_path);
        let opath_t = ring.register(opath).unwrap();
        for f in [CURSOR, APPEND] {
            // Keep them small: start afresh past 1 MiB.
            if w.cursor_models[f].len() > 1 << 20 {
                std::fs::write(&w.cursor_paths[f], b"").unwrap();
                w.cursor_models[f].clear();
            }
        }
        let cursors = [CURSOR, APPEND].map(|f| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .append(f == APPEND)
                .open(&w.cursor_paths[f])
                .unwrap();
            let t = ring.register(file.try_clone().unwrap()).unwrap();
            assert_eq!(ring.info(t).unwrap().append, f == APPEND);
            let c = CursorFile {
                t,
                file,
                pos: 0,
                busy: false,
                unknown: false,
            };
            assert_eq!(c.size(), w.cursor_models[f].len() as u64, "cursor file {f}");
            c
        });
        let (rx, tx) = pipe();
        let pipe_rx_dup = rx.try_clone().unwrap();
        let pipe_r = ring.register(rx).unwrap();
        let nq = 1 + rng.below(3) as usize;
        let queue_caps: Vec<usize> = (0..nq)
            .map(|_| [1, 2, 5, 16, 256][rng.below(5) as usize])
            .collect();
        let queues = queue_caps
            .iter()
            .map(|&cap| Arc::new(CompletionQueue::new(cap)))
            .collect();
        let handle_cap = [1, 4, 8192][rng.below(3) as usize];
        Episode {
            w,
            rng,
            shared,
            ring: Some(ring),
            file_t,
            scratch_t,
            stale_t,
            dir_t,
            efd_t,
            opath_t,
            cursors,
            other: None,
            early_ids: Vec::new(),
            fps: Vec::new(),
            force_queue: None,
            late_handle: None,
            silent: Vec::new(),
            pipe_r,
            pipe_tx: tx,
            pipe_rx_dup,
            records_written: 0,
            records_seen: HashSet::new(),
            pipe_reads_unseen: 0,
            next_tag: 1,
            pending: HashMap::new(),
            tickets: Vec::new(),
            futures: Vec::new(),
            queues,
            queue_caps,
            sink: Arc::new(Mutex::new(Vec::new())),
            busy: vec![false; SCRATCH_BLOCKS],
            handle_q: Arc::new(CompletionQueue::new(handle_cap)),
            handle_sink: Arc::new(Mutex::new(Vec::new())),
            handle_seen: HashSet::new(),
            handle_counts: Vec::new(),
            handle_stop: Arc::new(AtomicBool::new(false)),
            handle_threads: Vec::new(),
            drivers: Vec::new(),
            ops_left: ops,
            sqpoll,
        }
    }

    fn note(&mut self, s: String) {
        let mut log = self.shared.log.lock().unwrap();
        if log.len() == 60 {
            log.pop_front();
        }
        log.push_back(s);
        drop(log);
        self.beat();
    }

    /// A note also kept among the episode's events.
    fn event(&mut self, s: String) {
        let mut ev = self.shared.events.lock().unwrap();
        if ev.len() == 40 {
            ev.remove(1); // keep the episode's first line
        }
        ev.push_back(s.clone());
        drop(ev);
        self.note(s);
    }

    /// Progress (see [`STALL`]).
    fn beat(&self) {
        self.shared.beat.fetch_add(1, Ordering::Relaxed);
    }

    fn ring(&mut self) -> &mut Ring {
        self.ring.as_mut().expect("ring alive")
    }

    fn pool(&mut self) -> BufferPool {
        let i = if self.rng.chance(80) { 0 } else { 1 };
        self.w.pools[i].clone()
    }

    fn buf(&mut self) -> Option<PoolBuf> {
        let p = self.pool();
        match p.try_get() {
            Ok(b) => Some(b),
            Err(_) => {
                self.w.totals.skipped_no_buffer += 1;
                None
            }
        }
    }

    /// Records in the pipe not yet claimed by a pending pipe read.
    fn records_spare(&self) -> i64 {
        let in_pipe = self.records_written as i64
            - self.records_seen.len() as i64
            - self.pipe_reads_unseen as i64;
        let pending_reads = self
            .pending
            .values()
            .filter(|p| matches!(p.kind, Kind::PipeRead) && !p.abandoned)
            .count() as i64;
        in_pipe - pending_reads
    }

    fn feed_pipe(&mut self, n: u64) {
        let mut bytes = Vec::with_capacity(n as usize * REC);
        for _ in 0..n {
            bytes.extend_from_slice(&self.records_written.to_le_bytes());
            self.records_written += 1;
        }
        write_fd(self.pipe_tx.as_raw_fd(), &bytes);
    }

    // ---- building operations ----

    /// A random operation: its kind (expectation) and the op itself; `None` when no buffer
    /// is free or the choice does not fit right now.
    fn make_op(&mut self, route: Route) -> Option<(Kind, Op)> {
        let k = self
            .rng
            .weighted(&[33, 30, 5, 8, 6, 2, 3, 2, 10, 3, 1, 1, 1]);
        let cap_of = |b: &PoolBuf| b.capacity();
        Some(match k {
            0 => (Kind::Nop, Op::nop()),
            1 => {
                let mut b = self.buf()?;
                let small = self.rng.chance(85);
                let len = if small {
                    1 + self.rng.below(512) as usize
                } else {
                    1 + self.rng.below(cap_of(&b) as u64) as usize
                };
                // Now and then a read ending exactly at the largest file position: valid,
                // and past the end of the file (0 bytes).
                let off = if self.rng.chance(3) {
                    I64MAX - len as u64
                } else {
                    self.rng.below(FILE_SIZE + 100)
                };
                if self.rng.chance(15) {
                    // read_append after some bytes already held.
                    let at = self.rng.below((cap_of(&b) - len) as u64 + 1) as usize;
                    b.set_len(at).unwrap();
                    for (i, x) in b.data_mut().iter_mut().enumerate() {
                        *x = (i as u8) ^ 0x3C;
                    }
                    let t = self.file_t;
                    (
                        Kind::FileRead { off, len, at },
                        Op::read_append(t, off, b, len),
                    )
                } else if len == cap_of(&b) && self.rng.chance(50) {
                    let t = self.file_t;
                    (Kind::FileRead { off, len, at: 0 }, Op::read(t, off, b))
                } else {
                    let t = self.file_t;
                    (
                        Kind::FileRead { off, len, at: 0 },
                        Op::read_len(t, off, b, len),
                    )
                }
            }
            2 => {
                let n = 1 + self.rng.below(3) as usize;
                let mut off = self.rng.below(FILE_SIZE);
                let mut bufs = Vec::new();
                for _ in 0..n {
                    match self.buf() {
                        Some(b) => bufs.push(b),
                        None => return None,
                    }
                }
                let edge = self.rng.chance(3);
                if self.rng.chance(50) {
                    let mut lens = Vec::new();
                    for b in &mut bufs {
                        let l = 1 + self.rng.below(700) as usize;
                        b.set_len(l).unwrap();
                        lens.push(l);
                    }
                    if edge {
                        off = I64MAX - lens.iter().sum::<usize>() as u64;
                    }
                    let t = self.file_t;
                    (
                        Kind::FileReadv {
                            off,
                            lens,
                            parts: None,
                        },
                        Op::readv(t, off, bufs),
                    )
                } else {
                    let mut parts = Vec::new();
                    for b in &mut bufs {
                        let cap = b.capacity();
                        let start = self.rng.below(cap as u64 - 1) as usize;
                        let len = 1 + self.rng.below((cap - start).min(700) as u64) as usize;
                        for x in b.capacity_mut().iter_mut() {
                            *x = 0xEE;
                        }
                        parts.push(BufPart { start, len });
                    }
                    let lens: Vec<usize> = parts.iter().map(|p| p.len).collect();
                    if edge {
                        off = I64MAX - lens.iter().sum::<usize>() as u64;
                    }
                    let t = self.file_t;
                    let op = Op::readv_parts(t, off, bufs, parts.clone());
                    (
                        Kind::FileReadv {
                            off,
                            lens,
                            parts: Some(parts),
                        },
                        op,
                    )
                }
            }
            3 => {
                // A pipe read may only block the ring's caller if data is there for it.
                if route == Route::Wait && self.records_spare() < 1 {
                    return None;
                }
                let b = self.buf()?;
                let t = self.pipe_r;
                // Streams ignore the offset, whatever it is.
                let off = [0, u64::MAX, I64MAX, self.rng.next()][self.rng.below(4) as usize];
                (Kind::PipeRead, Op::read_len(t, off, b, REC))
            }
            4 | 5 => {
                let free: Vec<usize> = (0..SCRATCH_BLOCKS).filter(|&b| !self.busy[b]).collect();
                if free.is_empty() {
                    return None;
                }
                let blk = free[self.rng.below(free.len() as u64) as usize];
                let off_in = self.rng.below(BS as u64 - 1);
                let off = (blk * BS) as u64 + off_in;
                let max = BS as u64 - off_in;
                let tag = self.next_tag;
                let fill = |b: &mut PoolBuf, n: usize, salt: u64| {
                    b.set_len(n).unwrap();
                    for (i, x) in b.data_mut().iter_mut().enumerate() {
                        *x = mix(tag ^ salt ^ i as u64) as u8;
                    }
                };
                if k == 4 {
                    let mut b = self.buf()?;
                    // A frame write sends the header too.
                    let frame = self.rng.chance(20);
                    let h = if frame { b.header_len() as u64 } else { 0 };
                    if h >= max {
                        return None;
                    }
                    let n = 1 + self.rng.below((max - h).min(1500)) as usize;
                    fill(&mut b, n, 0);
                    for (i, x) in b.header_mut().iter_mut().enumerate() {
                        *x = mix(tag ^ 0x4EAD ^ i as u64) as u8;
                    }
                    let bytes = if frame {
                        b.frame().to_vec()
                    } else {
                        b.data().to_vec()
                    };
                    self.busy[blk] = true;
                    let t = self.scratch_t;
                    let b: IoBuf = if self.rng.chance(30) {
                        b.share().into()
                    } else {
                        b.into()
                    };
                    let op = if frame {
                        Op::write_frame(t, off, b)
                    } else {
                        Op::write(t, off, b)
                    };
                    (Kind::ScratchWrite { off, bytes }, op)
                } else {
                    let n1 = 1 + self.rng.below((max / 2).max(1)) as usize;
                    let n2 = 1 + self.rng.below((max - n1 as u64).clamp(1, 700)) as usize;
                    if n1 + n2 > max as usize {
                        return None;
                    }
                    let mut a = self.buf()?;
                    let mut b = self.buf()?;
                    fill(&mut a, n1, 1);
                    fill(&mut b, n2, 2);
                    let mut bytes = a.data().to_vec();
                    bytes.extend_from_slice(b.data());
                    self.busy[blk] = true;
                    let t = self.scratch_t;
                    let op = if self.rng.chance(50) {
                        Op::writev(t, off, vec![IoBuf::from(a), IoBuf::from(b)])
                    } else {
                        // The same bytes as parts of whole buffers.
                        let (la, lb) = (a.len(), b.len());
                        let parts =
                            vec![BufPart { start: 0, len: la }, BufPart { start: 0, len: lb }];
                        Op::writev_parts(t, off, vec![a.into(), b.into()], parts)
                    };
                    (Kind::ScratchWrite { off, bytes }, op)
                }
            }
            6 => {
                let d = Duration::from_micros(self.rng.below(2000));
                (Kind::Timeout, Op::timeout(d))
            }
            7 => {
                if route == Route::Wait && self.records_spare() < 1 {
                    return None;
                }
                let t = self.pipe_r;
                (Kind::Poll, Op::poll(t, libc::POLLIN as u32))
            }
            9 => self.make_cursor_write(route)?,
            10 => {
                // Only a cancel ends it: it needs an id (no wait, no future).
                if matches!(route, Route::Wait | Route::Future) {
                    return None;
                }
                let d = HUGE[self.rng.below(HUGE.len() as u64) as usize];
                (Kind::NeverTimeout, Op::timeout(d))
            }
            11 => (Kind::PollOut, Op::poll(self.efd_t, libc::POLLOUT as u32)),
            12 => {
                if self.rng.chance(85) {
                    (Kind::Fsync, Op::fsync(self.dir_t, self.rng.chance(50)))
                } else {
                    (Kind::Fsync, Op::fsync(self.scratch_t, true))
                }
            }
            _ => self.make_invalid()?,
        })
    }

    /// A `write_cursor` to the cursor file (after moving its position, at times) or to
    /// the `O_APPEND` file; one in flight per file.
    fn make_cursor_write(&mut self, route: Route) -> Option<(Kind, Op)> {
        let f = if self.rng.chance(50) { CURSOR } else { APPEND };
        // Its completion must be seen (where it landed is checked then).
        if self.cursors[f].busy || route == Route::Detach {
            return None;
        }
        let mut b = self.buf()?;
        if f == CURSOR && self.rng.chance(30) {
            let to = self.rng.below(self.w.cursor_models[f].len() as u64 + 2000);
            let c = &mut self.cursors[f];
            // SAFETY: lseek on a descriptor this test owns.
            let r = unsafe { libc::lseek(c.file.as_raw_fd(), to as libc::off_t, libc::SEEK_SET) };
            assert_eq!(r, to as libc::off_t);
            c.pos = to;
        }
        let n = 1 + self.rng.below(1500) as usize;
        let tag = self.next_tag;
        b.set_len(n).unwrap();
        for (i, x) in b.data_mut().iter_mut().enumerate() {
            *x = mix(tag ^ 0xC0C0 ^ i as u64) as u8;
        }
        let bytes = b.data().to_vec();
        let pos = if f == APPEND {
            self.w.cursor_models[f].len() as u64
        } else {
            self.cursors[f].pos
        };
        self.cursors[f].busy = true;
        self.w.totals.cursor_writes += 1;
        let t = self.cursors[f].t;
        let op = if self.rng.chance(30) {
            Op::write_cursor(t, b.share())
        } else {
            Op::write_cursor(t, b)
        };
        Some((Kind::CursorWrite { f, pos, bytes }, op))
    }

    /// A buffer whose whole capacity holds a pattern and whose data is `len` bytes of it
    /// (at most the capacity).
    fn pattern_buf(&mut self, len: usize) -> Option<PoolBuf> {
        let mut b = self.buf()?;
        let salt = self.rng.next();
        for (i, x) in b.capacity_mut().iter_mut().enumerate() {
            *x = mix(salt ^ i as u64) as u8;
        }
        for (i, x) in b.header_mut().iter_mut().enumerate() {
            *x = mix(salt ^ 0x4EAD ^ i as u64) as u8;
        }
        let len = len.min(b.capacity());
        b.set_len(len).unwrap();
        self.fps.push(fp_pool(&mut b));
        Some(b)
    }

    /// An offset at which a transfer of `len` (> 0) bytes ends past `i64::MAX`, the
    /// largest file position: refused with `OffsetOutOfRange` (u64::MAX is io_uring's
    /// "current position" and must never become one).
    fn bad_offset(&mut self, len: u64) -> u64 {
        let first = I64MAX - len + 1;
        match self.rng.below(6) {
            0 => u64::MAX,
            1 => first,
            2 => I64MAX + 1,
            3 => I64MAX,
            // offset + len wraps to exactly 0.
            4 => (u64::MAX - len).wrapping_add(1),
            _ => first + self.rng.below(u64::MAX - first),
        }
    }

    /// An operation refused before the kernel.
    fn make_invalid(&mut self) -> Option<(Kind, Op)> {
        let inv = Expect::Invalid("");
        let zero = Expect::Exact(ErrorKind::ZeroLength { what: "transfer" });
        let not_writable = Expect::Exact(ErrorKind::NotWritable);
        let oor = |offset: u64, len: usize| {
            Expect::Exact(ErrorKind::OffsetOutOfRange {
                offset,
                len: len as u64,
            })
        };
        let t = self.file_t;
        let which = self.rng.below(19);
        self.fps.clear();
        let (what, want, op): (&'static str, Expect, Op) = match which {
            0 => {
                let b = self.pattern_buf(0)?;
                ("read_len 0", zero, Op::read_len(t, 0, b, 0))
            }
            1 => {
                let b = self.pattern_buf(0)?;
                let cap = b.capacity();
                (
                    "read_len > cap",
                    Expect::BufferTooSmall,
                    Op::read_len(t, 0, b, cap + 1),
                )
            }
            2 => {
                let b = self.pattern_buf(0)?;
                ("stale target", Expect::Stale, Op::read(self.stale_t, 0, b))
            }
            3 => {
                let b = self.pattern_buf(4)?;
                (
                    "write to a read-only file",
                    not_writable,
                    Op::write(t, 0, b),
                )
            }
            4 => {
                let b = self.pattern_buf(0)?;
                ("write of 0 bytes", zero, Op::write(self.scratch_t, 0, b))
            }
            5 => (
                "readv of nothing",
                Expect::Exact(ErrorKind::ZeroLength {
                    what: "vectored transfer (no buffers)",
                }),
                Op::readv(t, 0, Vec::new()),
            ),
            6 => {
                let b = self.pattern_buf(0)?;
                let cap = b.capacity();
                let p = vec![BufPart { start: cap, len: 1 }];
                ("part past capacity", inv, Op::readv_parts(t, 0, vec![b], p))
            }
            7 => {
                let pick = |r: &mut Rng| {
                    if r.chance(50) {
                        Duration::ZERO
                    } else {
                        HUGE[r.below(HUGE.len() as u64) as usize]
                    }
                };
                let (a, d) = (pick(&mut self.rng), pick(&mut self.rng));
                ("timeout with a deadline", inv, Op::timeout(a).deadline(d))
            }
            8 => {
                let b = self.pattern_buf(4)?;
                (
                    "nowait write",
                    inv,
                    Op::write(self.scratch_t, 0, b).nowait(),
                )
            }
            9 => {
                // A single read at an offset whose end passes i64::MAX.
                let tgt = if self.rng.chance(50) {
                    self.file_t
                } else {
                    self.scratch_t
                };
                let at = if self.rng.chance(30) {
                    self.rng.below(BS as u64 / 2) as usize
                } else {
                    0
                };
                let b = self.pattern_buf(at)?;
                let cap = b.capacity();
                let len = 1 + self.rng.below((cap - at) as u64) as usize;
                let off = self.bad_offset(len as u64);
                let op = if at > 0 {
                    Op::read_append(tgt, off, b, len)
                } else if len == cap {
                    Op::read(tgt, off, b)
                } else {
                    Op::read_len(tgt, off, b, len)
                };
                ("read past i64::MAX", oor(off, len), op)
            }
            10 => {
                let (bufs, parts, total) = self.vector_bufs(true)?;
                let off = self.bad_offset(total as u64);
                let tgt = if self.rng.chance(50) {
                    self.file_t
                } else {
                    self.scratch_t
                };
                let op = match parts {
                    Some(p) => Op::readv_parts(tgt, off, bufs, p),
                    None => Op::readv(tgt, off, bufs),
                };
                ("readv past i64::MAX", oor(off, total), op)
            }
            11 => {
                let n = 1 + self.rng.below(1500) as usize;
                let b = self.pattern_buf(n)?;
                let frame = self.rng.chance(30);
                let len = if frame { b.frame().len() } else { b.len() };
                let off = self.bad_offset(len as u64);
                let b: IoBuf = if self.rng.chance(30) {
                    b.share().into()
                } else {
                    b.into()
                };
                let op = if frame {
                    Op::write_frame(self.scratch_t, off, b)
                } else {
                    Op::write(self.scratch_t, off, b)
                };
                ("write past i64::MAX", oor(off, len), op)
            }
            12 => {
                let (bufs, parts, total) = self.vector_bufs(false)?;
                let off = self.bad_offset(total as u64);
                let bufs: Vec<IoBuf> = bufs.into_iter().map(IoBuf::from).collect();
                let op = match parts {
                    Some(p) => Op::writev_parts(self.scratch_t, off, bufs, p),
                    None => Op::writev(self.scratch_t, off, bufs),
                };
                ("writev past i64::MAX", oor(off, total), op)
            }
            13 => {
                // One part whose start + len overflows (the rest valid).
                let read = self.rng.chance(50);
                let (bufs, parts, _) = self.vector_bufs(read)?;
                let mut parts = parts.unwrap_or_else(|| {
                    bufs.iter()
                        .map(|b| BufPart {
                            start: 0,
                            len: b.len(),
                        })
                        .collect()
                });
                let i = self.rng.below(parts.len() as u64) as usize;
                let cap = bufs[i].capacity();
                parts[i] = [
                    BufPart {
                        start: usize::MAX,
                        len: 1,
                    },
                    BufPart {
                        start: 1,
                        len: usize::MAX,
                    },
                    // start + len wraps to exactly 0.
                    BufPart {
                        start: cap,
                        len: (usize::MAX - cap) + 1,
                    },
                    BufPart {
                        start: usize::MAX,
                        len: usize::MAX,
                    },
                ][self.rng.below(4) as usize];
                let off = self.rng.below(FILE_SIZE);
                let op = if read {
                    Op::readv_parts(self.file_t, off, bufs, parts)
                } else {
                    let bufs: Vec<IoBuf> = bufs.into_iter().map(IoBuf::from).collect();
                    Op::writev_parts(self.scratch_t, off, bufs, parts)
                };
                ("overflowing part", Expect::Invalid("part"), op)
            }
            14 => {
                // Transfers on a directory, an eventfd, an O_PATH descriptor.
                let k = self.rng.below(3) as usize;
                let tgt = [self.dir_t, self.efd_t, self.opath_t][k];
                let which = self.rng.below(5);
                // The O_PATH descriptor is a regular file open for neither reading nor
                // writing.
                let want = match (k, which) {
                    (0, _) => Expect::WrongKind(FdKind::Directory),
                    (1, _) => Expect::WrongKind(FdKind::Other),
                    (_, 2 | 4) => not_writable,
                    _ => Expect::Exact(ErrorKind::NotReadable),
                };
                let op = match which {
                    0 => Op::read(tgt, 0, self.pattern_buf(0)?),
                    1 => Op::read_len(tgt, 0, self.pattern_buf(0)?, 8),
                    2 => Op::write(tgt, 0, self.pattern_buf(8)?),
                    3 => {
                        let (bufs, _, _) = self.vector_bufs(true)?;
                        Op::readv(tgt, 0, bufs)
                    }
                    _ => {
                        let (bufs, _, _) = self.vector_bufs(false)?;
                        Op::writev(tgt, 0, bufs.into_iter().map(IoBuf::from).collect())
                    }
                };
                ("transfer on a wrong-kind target", want, op)
            }
            15 => match self.rng.below(4) {
                0 => (
                    "fsync of an eventfd",
                    Expect::WrongKind(FdKind::Other),
                    Op::fsync(self.efd_t, false),
                ),
                1 => (
                    "fsync of an O_PATH descriptor",
                    Expect::Invalid("O_PATH"),
                    Op::fsync(self.opath_t, self.rng.chance(50)),
                ),
                2 => (
                    "poll of an O_PATH descriptor",
                    Expect::Invalid("O_PATH"),
                    Op::poll(self.opath_t, libc::POLLIN as u32),
                ),
                _ => ("poll for no event", inv, Op::poll(self.pipe_r, 0)),
            },
            16 => {
                // Positional writes to the O_APPEND file (they would land at its end).
                let off = self
                    .rng
                    .below(self.w.cursor_models[APPEND].len() as u64 + 100);
                let at = self.cursors[APPEND].t;
                let op = match self.rng.below(3) {
                    0 => {
                        let n = 1 + self.rng.below(100) as usize;
                        Op::write(at, off, self.pattern_buf(n)?)
                    }
                    1 => Op::write_frame(at, off, self.pattern_buf(1)?),
                    _ => {
                        let (bufs, parts, _) = self.vector_bufs(false)?;
                        let bufs: Vec<IoBuf> = bufs.into_iter().map(IoBuf::from).collect();
                        match parts {
                            Some(p) => Op::writev_parts(at, off, bufs, p),
                            None => Op::writev(at, off, bufs),
                        }
                    }
                };
                (
                    "positional write to an O_APPEND file",
                    Expect::Exact(ErrorKind::AppendOnly),
                    op,
                )
            }
            17 => {
                let ot = self.other.as_ref()?.target;
                let op = if self.rng.chance(50) {
                    Op::read(ot, 0, self.pattern_buf(0)?)
                } else {
                    Op::poll(ot, libc::POLLIN as u32)
                };
                ("another ring's target", Expect::Stale, op)
            }
            _ => {
                if self.rng.chance(50) {
                    (
                        "write_cursor to a read-only file",
                        not_writable,
                        Op::write_cursor(t, self.pattern_buf(4)?),
                    )
                } else {
                    let ct = self.cursors[CURSOR].t;
                    (
                        "write_cursor of 0 bytes",
                        zero,
                        Op::write_cursor(ct, self.pattern_buf(0)?),
                    )
                }
            }
        };
        *self.w.totals.refused.entry(what).or_insert(0) += 1;
        let fps = std::mem::take(&mut self.fps);
        Some((Kind::Invalid(what, want, fps), op))
    }

    /// 1 to 3 pattern buffers for a vectored transfer (`read`: fills `len()` or parts of
    /// the capacity; else writes `len()` or parts of the data), with parts half the time;
    /// and the transfer's total length.
    fn vector_bufs(&mut self, read: bool) -> Option<(Vec<PoolBuf>, Option<Vec<BufPart>>, usize)> {
        let n = 1 + self.rng.below(3) as usize;
        let mut bufs = Vec::new();
        for _ in 0..n {
            let len = 1 + self.rng.below(700) as usize;
            bufs.push(self.pattern_buf(len)?);
        }
        if self.rng.chance(50) {
            let total = bufs.iter().map(|b| b.len()).sum();
            return Some((bufs, None, total));
        }
        let parts: Vec<BufPart> = bufs
            .iter()
            .map(|b| {
                let room = if read { b.capacity() } else { b.len() };
                let start = self.rng.below(room as u64) as usize;
                let len = 1 + self.rng.below((room - start) as u64) as usize;
                BufPart { start, len }
            })
            .collect();
        let total = parts.iter().map(|p| p.len).sum();
        Some((bufs, Some(parts), total))
    }

    /// [`submit_op`](Self::submit_op) by route `Queue` to queue `qi`.
    fn submit_to_queue(&mut self, kind: Kind, op: Op, qi: usize) {
        self.force_queue = Some(qi);
        self.submit_op(kind, op, Route::Queue);
    }

    fn submit_random(&mut self) {
        let route = ALL_ROUTES[self.rng.weighted(&[10, 15, 15, 20, 20, 10, 10])];
        let (kind, op) = or_skip!(self.make_op(route));
        self.submit_op(kind, op, route);
    }

    /// Submit `op` (whose expectation is `kind`) by `route`, with a random deadline now
    /// and then; a refused operation is checked at once for leaving everything as it was.
    fn submit_op(&mut self, kind: Kind, mut op: Op, route: Route) {
        let tag = self.next_tag;
        self.next_tag += 1;
        op = op.tag(tag);
        let (mut deadline, mut huge) = (false, false);
        let deadline_ok = match &kind {
            Kind::Timeout | Kind::NeverTimeout => false,
            // It has its own.
            Kind::Invalid(what, ..) => !what.starts_with("timeout"),
            _ => true,
        };
        if deadline_ok && self.rng.chance(10) {
            deadline = true;
            let d = match self.rng.below(3) {
                0 => Duration::from_micros(self.rng.below(3000)),
                1 => Duration::from_secs(10),
                _ => {
                    huge = true;
                    self.w.totals.huge_deadlines += 1;
                    HUGE[self.rng.below(HUGE.len() as u64) as usize]
                }
            };
            op = op.deadline(d);
        }
        if matches!(kind, Kind::NeverTimeout) {
            self.w.totals.never_timeouts += 1;
        }
        self.note(format!(
            "submit #{tag} {kind:?} via {route:?} deadline={deadline} huge={huge}"
        ));
        if let Kind::ScratchWrite { off, bytes } = &kind {
            let h = format!(
                "#{tag} submitted: write {off}+{} via {route:?} deadline={deadline}",
                bytes.len()
            );
            self.w.history[*off as usize / BS].push(h);
        }
        self.w.totals.submitted[route as usize] += 1;
        self.w.totals.ops += 1;
        self.ops_left = self.ops_left.saturating_sub(1);
        let qi = match self.force_queue.take() {
            Some(qi) => qi,
            None => self.rng.below(self.queues.len() as u64) as usize,
        };
        let q = self.queues[qi].clone();
        let sink = self.sink.clone();
        let ring = self.ring.as_mut().unwrap();
        let before = ring.stats();
        let sub = ring.submit(op);
        let mut waited = None;
        let id = match route {
            Route::Wait => {
                waited = Some(sub.wait().unwrap());
                None
            }
            Route::Ticket => {
                let tk = sub.ticket();
                let id = tk.id();
                self.tickets.push((tag, tk));
                Some(id)
            }
            Route::Then => Some(sub.then(move |c| sink.lock().unwrap().push(c))),
            Route::Queue => Some(sub.to_queue(&q)),
            Route::Ring => Some(sub.to_ring()),
            Route::Future => {
                let f = sub.future();
                self.futures.push((tag, f));
                None
            }
            Route::Detach => Some(sub.detach()),
        };
        if let Kind::Invalid(what, ..) = &kind {
            // Refused before the kernel: no enter, one rejection, completed at once, and
            // nothing changed anywhere.
            let after = self.ring.as_ref().unwrap().stats();
            assert_eq!(
                (
                    after.enters,
                    after.submitted,
                    after.completed,
                    after.rejected
                ),
                (
                    before.enters,
                    before.submitted + 1,
                    before.completed + 1,
                    before.rejected + 1
                ),
                "#{tag} refused ({what}): reached the kernel or did not complete at once"
            );
            self.check_unchanged(&format!("#{tag} refused ({what})"));
        }
        if let Some(id) = id {
            if self.early_ids.len() < 8 {
                self.early_ids.push(id);
            }
        }
        if route == Route::Detach {
            self.w.totals.abandoned += 1;
            if matches!(kind, Kind::PipeRead) {
                // Consumes a record (or is cancelled at the ring's drop).
                self.pipe_reads_unseen += 1;
            }
        }
        let abandoned = route == Route::Detach;
        let p = Pending {
            kind,
            route,
            id,
            queue: qi,
            cancelled: false,
            deadline,
            huge,
            abandoned,
        };
        // A detached write lands unless its deadline or a cancel stops it (or the ring
        // drops mid-flight): then what it did is unknowable.
        if abandoned {
            if let Kind::ScratchWrite { off, bytes } = &p.kind {
                let (off, bytes) = (*off, bytes.clone());
                if deadline && !huge {
                    self.w.unknown[off as usize / BS] = true;
                } else {
                    self.apply_write(off, &bytes);
                }
            }
        }
        let never = matches!(p.kind, Kind::NeverTimeout);
        self.pending.insert(tag, p);
        if let Some(c) = waited {
            self.deliver(c, Route::Wait);
            return;
        }
        if self.rng.chance(if never { 30 } else { 4 }) {
            self.cancel_tag(tag);
        }
    }

    /// Everything a refused operation must have left alone: the scratch file (where no
    /// write is in flight) and the cursor files' content and position.
    fn check_unchanged(&mut self, when: &str) {
        self.w.check_scratch(when, &self.busy);
        for (f, c) in self.cursors.iter().enumerate() {
            if c.busy || c.unknown {
                continue;
            }
            assert_eq!(
                c.size(),
                self.w.cursor_models[f].len() as u64,
                "{when}: cursor file {f} size changed"
            );
            assert_eq!(
                c.position(),
                c.pos,
                "{when}: cursor file {f} position moved"
            );
        }
    }

    fn apply_write(&mut self, off: u64, bytes: &[u8]) {
        let o = off as usize;
        self.w.history[o / BS].push(format!("applied {}..{}", o, o + bytes.len()));
        self.w.model[o..o + bytes.len()].copy_from_slice(bytes);
    }

    fn cancel_tag(&mut self, tag: u64) {
        let id = or_skip!(self.pending.get(&tag).and_then(|p| p.id));
        let hit = self.ring().cancel(id);
        self.note(format!("cancel #{tag} -> {hit}"));
        if hit {
            self.w.totals.cancels_hit += 1;
            let p = self.pending.get_mut(&tag).unwrap();
            p.cancelled = true;
            if p.abandoned {
                // A detached write may now not land: unknowable.
                if let Kind::ScratchWrite { off, bytes } = &p.kind {
                    let (a, b) = (*off as usize / BS, (*off as usize + bytes.len() - 1) / BS);
                    for blk in a..=b {
                        self.w.unknown[blk] = true;
                    }
                }
            }
        }
    }

    fn cancel_random(&mut self) {
        let cands: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.id.is_some())
            .map(|(t, _)| *t)
            .collect();
        if !cands.is_empty() {
            let t = cands[self.rng.below(cands.len() as u64) as usize];
            self.cancel_tag(t);
        }
    }

    /// Judge one completion of a main-thread operation, delivered by `route`.
    fn deliver(&mut self, mut c: Completion, route: Route) {
        let tag = c.tag();
        let Some(p) = self.pending.remove(&tag) else {
            panic!(
                "completion #{tag} delivered by {route:?}: unknown or delivered twice ({:?})",
                c.result()
            );
        };
        assert!(
            !p.abandoned,
            "#{tag}: delivered by {route:?} after its delivery was given up ({p:?})"
        );
        assert_eq!(p.route, route, "#{tag}: delivered by the wrong route");
        self.w.totals.delivered[route as usize] += 1;
        let r = c.result();
        let outcome: &'static str = match r {
            Ok(_) => "ok",
            Err(e) if e.is_cancelled() => "cancelled",
            Err(e) if e.is_timed_out() => "timed out",
            Err(_) => "error",
        };
        *self.w.totals.outcomes.entry(outcome).or_insert(0) += 1;
        // Interrupted outcomes are legal only when asked for (or the ring is gone).
        let gone = self.ring.is_none();
        if let Err(e) = r {
            if e.is_cancelled() {
                assert!(
                    p.cancelled || gone,
                    "#{tag} {:?}: Cancelled without a cancel",
                    p.kind
                );
            }
            if e.is_timed_out() {
                assert!(
                    (p.deadline && !p.huge) || matches!(p.kind, Kind::Timeout),
                    "#{tag} {:?}: TimedOut without a deadline, or with a huge one ({p:?})",
                    p.kind
                );
            }
        }
        let interrupted = r.is_err_and(|e| e.is_cancelled() || e.is_timed_out());
        match &p.kind {
            Kind::Nop => assert!(r == Ok(0) || interrupted, "#{tag} nop: {r:?}"),
            Kind::Timeout => assert!(interrupted, "#{tag} timeout: {r:?}"),
            Kind::NeverTimeout => assert!(
                r.is_err_and(|e| e.is_cancelled()),
                "#{tag} a timer of a huge duration ended {r:?}"
            ),
            Kind::Poll => match r {
                Ok(m) => assert!(m & libc::POLLIN as usize != 0, "#{tag} poll mask {m:#x}"),
                _ => assert!(interrupted, "#{tag} poll: {r:?}"),
            },
            Kind::PollOut => match r {
                Ok(m) => assert!(m & libc::POLLOUT as usize != 0, "#{tag} poll mask {m:#x}"),
                _ => assert!(interrupted, "#{tag} poll: {r:?}"),
            },
            Kind::Fsync => assert!(r == Ok(0) || interrupted, "#{tag} fsync: {r:?}"),
            Kind::Invalid(what, want, fps) => {
                match r {
                    Err(e) if want.matches(&e.kind()) => {}
                    // A cancel can not win against a refusal: it completes at submission.
                    _ => panic!("#{tag} refused ({what}): {r:?}, want {want:?}"),
                }
                let got = fp_bufs(&mut c.take_bufs());
                assert!(
                    got.len() == fps.len() && got.iter().zip(fps).all(|(a, b)| fp_same(a, b)),
                    "#{tag} refused ({what}): its buffers did not come back untouched \
                     ({got:?} vs {fps:?})"
                );
            }
            Kind::CursorWrite { f, pos, bytes } => {
                let (f, pos) = (*f, *pos);
                let c = &mut self.cursors[f];
                c.busy = false;
                let known = !c.unknown;
                match r {
                    Ok(n) => {
                        assert_eq!(n, bytes.len(), "#{tag}: short cursor write to a file");
                        if known {
                            let mut now = vec![0u8; n];
                            c.file.read_exact_at(&mut now, pos).unwrap();
                            assert!(
                                now == *bytes,
                                "#{tag}: cursor write to file {f} did not land at {pos}"
                            );
                            assert_eq!(
                                c.position(),
                                pos + n as u64,
                                "#{tag}: cursor write to file {f} at {pos}: position after it"
                            );
                            let m = &mut self.w.cursor_models[f];
                            let end = pos as usize + n;
                            if m.len() < end {
                                m.resize(end, 0);
                            }
                            m[pos as usize..end].copy_from_slice(bytes);
                            assert_eq!(c.size(), m.len() as u64, "#{tag}: file {f} size");
                        }
                        c.pos = pos + n as u64;
                    }
                    _ => {
                        assert!(interrupted, "#{tag} cursor write: {r:?}");
                        if known {
                            assert_eq!(
                                c.position(),
                                c.pos,
                                "#{tag}: an interrupted cursor write moved the position"
                            );
                        }
                    }
                }
            }
            Kind::FileRead { off, len, at } => match r {
                Ok(n) => {
                    let want = if *off >= FILE_SIZE {
                        0
                    } else {
                        (*len).min((FILE_SIZE - off) as usize)
                    };
                    assert_eq!(n, want, "#{tag} read at {off} len {len}: byte count");
                    let Bufs::Pool(b) = c.take_bufs() else {
                        panic!("#{tag}: read without its buffer")
                    };
                    assert_eq!(b.len(), at + n, "#{tag}: buffer len()");
                    for (i, &x) in b.data()[..*at].iter().enumerate() {
                        assert_eq!(x, (i as u8) ^ 0x3C, "#{tag}: read_append changed byte {i}");
                    }
                    assert!(
                        b.data()[*at..] == *file_at(&self.w.file, *off, n),
                        "#{tag}: bytes differ from the file at {off}"
                    );
                }
                _ => assert!(interrupted, "#{tag} read: {r:?}"),
            },
            Kind::FileReadv { off, lens, parts } => match r {
                Ok(n) => {
                    let total: usize = lens.iter().sum();
                    let want = if *off >= FILE_SIZE {
                        0
                    } else {
                        total.min((FILE_SIZE - off) as usize)
                    };
                    assert_eq!(n, want, "#{tag} readv: byte count");
                    let Bufs::PoolList(mut v) = c.take_bufs() else {
                        panic!("#{tag}: readv without its buffers")
                    };
                    let mut got = Vec::new();
                    match parts {
                        None => {
                            for b in &v {
                                got.extend_from_slice(b.data());
                            }
                        }
                        Some(ps) => {
                            for (b, p) in v.iter_mut().zip(ps) {
                                let cap = b.capacity_mut();
                                got.extend_from_slice(&cap[p.start..p.start + p.len]);
                                // Nothing outside the part was written.
                                assert!(
                                    cap[..p.start].iter().all(|&x| x == 0xEE),
                                    "#{tag}: readv_parts wrote before its part"
                                );
                                assert!(
                                    cap[p.start + p.len..].iter().all(|&x| x == 0xEE),
                                    "#{tag}: readv_parts wrote past its part"
                                );
                            }
                            for (i, b) in got.iter_mut().enumerate().skip(n) {
                                // Bytes past the result were not filled.
                                assert_eq!(*b, 0xEE, "#{tag}: byte {i} past the result changed");
                            }
                            got.truncate(n);
                        }
                    }
                    assert_eq!(got.len(), n);
                    assert!(
                        got == file_at(&self.w.file, *off, n),
                        "#{tag}: readv bytes differ from the file at {off}"
                    );
                }
                _ => assert!(interrupted, "#{tag} readv: {r:?}"),
            },
            Kind::PipeRead => match r {
                Ok(n) => {
                    assert_eq!(n, REC, "#{tag}: a pipe read returned a partial record");
                    let Bufs::Pool(b) = c.take_bufs() else {
                        panic!("#{tag}: no buffer")
                    };
                    assert_eq!(b.len(), n, "#{tag}: buffer len() is not the byte count");
                    let rec = u64::from_le_bytes(b.data().try_into().unwrap());
                    assert!(
                        rec < self.records_written,
                        "#{tag}: record {rec} never written"
                    );
                    assert!(
                        self.records_seen.insert(rec),
                        "#{tag}: record {rec} read twice"
                    );
                }
                _ => assert!(interrupted, "#{tag} pipe read: {r:?}"),
            },
            Kind::ScratchWrite { off, bytes } => {
                let (a, b) = (*off as usize / BS, (*off as usize + bytes.len() - 1) / BS);
                for blk in a..=b {
                    self.busy[blk] = false;
                }
                let h = format!(
                    "#{tag} write {}..{} via {route:?} (cancel asked {}, deadline {}): {r:?}",
                    off,
                    *off as usize + bytes.len(),
                    p.cancelled,
                    p.deadline
                );
                self.w.history[a].push(h);
                match r {
                    Ok(n) => {
                        assert_eq!(n, bytes.len(), "#{tag}: short write to a regular file");
                        let (off, bytes) = (*off, bytes.clone());
                        self.apply_write(off, &bytes);
                    }
                    _ => assert!(interrupted, "#{tag} write: {r:?}"),
                }
            }
        }
    }

    // ---- collecting completions by every route ----

    fn drain_some(&mut self) {
        match self.rng.below(6) {
            0 => {
                let i = self.rng.below(self.queues.len() as u64) as usize;
                let max = 1 + self.rng.below(8);
                for _ in 0..max {
                    match self.queues[i].pop() {
                        Some(c) => self.deliver(c, Route::Queue),
                        None => break,
                    }
                }
            }
            1 => {
                let v: Vec<Completion> = std::mem::take(&mut *self.sink.lock().unwrap());
                for c in v {
                    self.deliver(c, Route::Then);
                }
            }
            2 => self.poll_futures(),
            3 => {
                let max = 1 + self.rng.below(16);
                for _ in 0..max {
                    match self.ring().pop_completion() {
                        Some(c) => self.deliver(c, Route::Ring),
                        None => break,
                    }
                }
            }
            4 => self.collect_tickets(),
            _ => self.drain_handles(),
        }
    }

    fn poll_futures(&mut self) {
        let mut i = 0;
        while i < self.futures.len() {
            if let Some(c) = noop_poll(&mut self.futures[i].1) {
                self.futures.swap_remove(i);
                self.deliver(c, Route::Future);
            } else {
                i += 1;
            }
        }
    }

    fn collect_tickets(&mut self) {
        let mut i = 0;
        while i < self.tickets.len() {
            let done = self
                .ring
                .as_ref()
                .is_some_and(|r| r.is_done(&self.tickets[i].1));
            if done {
                let (_, tk) = self.tickets.swap_remove(i);
                let c = self.ring().wait(tk).unwrap();
                self.deliver(c, Route::Ticket);
            } else {
                i += 1;
            }
        }
    }

    fn drain_handles(&mut self) {
        let mut got = Vec::new();
        while let Some(c) = self.handle_q.pop() {
            got.push((c, Route::Queue));
        }
        for c in std::mem::take(&mut *self.handle_sink.lock().unwrap()) {
            got.push((c, Route::Then));
        }
        for (c, _route) in got {
            let tag = c.tag();
            check_handle(&c, &self.w.file);
            assert!(
                self.handle_seen.insert(tag),
                "handle op {tag:#x} delivered twice"
            );
            let th = ((tag >> 40) & 0xff) as usize;
            self.handle_counts[th]
                .outstanding
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn drop_ticket(&mut self) {
        if self.tickets.is_empty() {
            return;
        }
        let i = self.rng.below(self.tickets.len() as u64) as usize;
        let (tag, tk) = self.tickets.swap_remove(i);
        drop(tk);
        self.abandon(tag);
        self.note(format!("drop ticket #{tag}"));
    }

    fn drop_future(&mut self) {
        if self.futures.is_empty() {
            return;
        }
        let i = self.rng.below(self.futures.len() as u64) as usize;
        let (tag, f) = self.futures.swap_remove(i);
        drop(f);
        self.abandon(tag);
        self.note(format!("drop future #{tag}"));
    }

    /// Give up on an operation's delivery; what it does to the files becomes unknowable
    /// (a pipe read may consume a record, a write may or may not land).
    fn abandon(&mut self, tag: u64) {
        let p = or_skip!(self.pending.get_mut(&tag));
        if p.abandoned {
            return;
        }
        p.abandoned = true;
        self.w.totals.abandoned += 1;
        self.w.totals.submitted[p.route as usize] -= 1;
        match &p.kind {
            Kind::PipeRead => self.pipe_reads_unseen += 1,
            Kind::ScratchWrite { off, bytes } => {
                let (a, b) = (*off as usize / BS, (*off as usize + bytes.len() - 1) / BS);
                for blk in a..=b {
                    self.w.unknown[blk] = true;
                }
            }
            Kind::CursorWrite { f, .. } => {
                // It may land at any time now: later writes are not checked either.
                let c = &mut self.cursors[*f];
                c.unknown = true;
                c.busy = false;
            }
            _ => {}
        }
    }

    // ---- driving ----

    fn drive(&mut self) {
        let r = match self.rng.below(4) {
            0 => self.ring().poll(),
            1 => self.ring().run_once(Some(Duration::ZERO)),
            2 => self.ring().run_once(Some(Duration::from_micros(200))),
            _ => {
                let min = self.rng.below(4) as usize;
                self.ring().run_wait(min, Some(Duration::from_micros(300)))
            }
        };
        r.unwrap();
    }

    // ---- huge waits ----

    /// Waits with a huge timeout, each only where something will end it: they must wait
    /// (not fail, not panic, not return at once with nothing) and return.
    fn huge_wait(&mut self) {
        self.w.totals.huge_waits += 1;
        let huge = HUGE[self.rng.below(HUGE.len() as u64) as usize];
        match self.rng.below(5) {
            0 | 1 => {
                // Short timers: a huge run_once / run_wait returns once completions come.
                let first = self.next_tag;
                for _ in 0..1 + self.rng.below(3) {
                    let d = Duration::from_micros(self.rng.below(2000));
                    self.submit_op(Kind::Timeout, Op::timeout(d), Route::Ticket);
                }
                let ring = self.ring.as_ref().unwrap();
                let not_done = self
                    .tickets
                    .iter()
                    .filter(|(t, tk)| *t >= first && !ring.is_done(tk))
                    .count();
                if not_done == 0 {
                    return;
                }
                let min = 1 + self.rng.below(not_done as u64) as usize;
                let run_once = self.rng.chance(50);
                self.note(format!(
                    "huge wait {huge:?}: run_once {run_once}, min {min} of {not_done}"
                ));
                let ring = self.ring.as_mut().unwrap();
                let r = if run_once {
                    ring.run_once(Some(huge))
                } else {
                    ring.run_wait(min, Some(huge))
                };
                r.unwrap_or_else(|e| panic!("a wait of {huge:?} failed: {e:?}"));
            }
            2 => {
                // Pool 1 emptied; a thread gives one slot back a little later.
                let p = self.w.pools[1].clone();
                let mut held = Vec::new();
                while let Ok(b) = p.try_get() {
                    held.push(b);
                }
                let b = or_skip!(held.pop());
                self.note(format!("huge pool wait {huge:?}"));
                let t = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_micros(200));
                    drop(b);
                });
                let got = p.get_timeout(huge);
                t.join().unwrap();
                assert!(got.is_ok(), "get_timeout({huge:?}) failed: {got:?}");
            }
            3 => {
                // A completion queue with something in it.
                let i = or_skip!((0..self.queues.len()).find(|&i| !self.queues[i].is_empty()));
                self.note(format!("huge queue pop {huge:?}"));
                let c = self.queues[i].pop_timeout(huge);
                let c = c.unwrap_or_else(|| panic!("pop_timeout({huge:?}) of a non-empty queue"));
                self.deliver(c, Route::Queue);
            }
            _ => {
                // A queue of numbers: a pop waits for a push, a push for room.
                self.note(format!("huge side-queue waits {huge:?}"));
                let q = Arc::new(CompletionQueue::new(1));
                let later = |f: Box<dyn FnOnce() -> Option<u64> + Send>| {
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_micros(200));
                        f()
                    })
                };
                let q2 = q.clone();
                let t = later(Box::new(move || q2.push(1u64).ok().map(|_| 1)));
                assert_eq!(q.pop_timeout(huge), Some(1), "pop_timeout({huge:?})");
                assert_eq!(t.join().unwrap(), Some(1));
                q.push(2).unwrap();
                let q2 = q.clone();
                let t = later(Box::new(move || q2.pop()));
                assert_eq!(q.push_timeout(3, huge), Ok(()), "push_timeout({huge:?})");
                assert_eq!(t.join().unwrap(), Some(2));
                let mut out = Vec::new();
                assert_eq!(q.pop_batch_timeout(&mut out, 4, huge), 1);
                assert_eq!(out, [3]);
            }
        }
    }

    // ---- ids of other rings ----

    /// A second ring with never-ending operations in its first slots, and never-ending
    /// timers as this ring's first operations: the same slots and generations on both.
    fn start_other_ring(&mut self) {
        let mut ring = Ring::builder().entries(4).build().unwrap();
        let (rx, tx) = pipe();
        let target = ring.register(rx).unwrap();
        let mut tickets = Vec::new();
        for i in 0..4u64 {
            let op = if i < 3 {
                Op::timeout(HUGE[self.rng.below(HUGE.len() as u64) as usize])
            } else {
                Op::poll(target, libc::POLLIN as u32)
            };
            tickets.push(ring.submit(op.tag(u64::MAX - i)).ticket());
        }
        ring.poll().unwrap();
        let ids = tickets.iter().map(|t| t.id()).collect();
        self.other = Some(OtherRing {
            ring,
            target,
            _tx: tx,
            tickets,
            ids,
        });
        for _ in 0..3 {
            let route = [
                Route::Ticket,
                Route::Then,
                Route::Queue,
                Route::Ring,
                Route::Detach,
            ][self.rng.below(5) as usize];
            let d = HUGE[self.rng.below(HUGE.len() as u64) as usize];
            self.submit_op(Kind::NeverTimeout, Op::timeout(d), route);
        }
    }

    /// Cancel with ids this ring never issued (the other ring's, dead rings'): refused, and
    /// nothing cancelled (an operation of this ring cancelled by one completes Cancelled
    /// without a cancel asked: `deliver` fails). And the other way round.
    fn foreign_cancel(&mut self) {
        self.w.totals.foreign_cancels += 1;
        let mut foreign: Vec<OpId> = self.w.old_ids.clone();
        if let Some(o) = &self.other {
            foreign.extend(&o.ids);
        }
        if !foreign.is_empty() {
            let id = foreign[self.rng.below(foreign.len() as u64) as usize];
            let hit = self.ring().cancel(id);
            self.note(format!("cancel with a foreign id {id:?} -> {hit}"));
            assert!(!hit, "the ring accepted a cancel with a foreign id {id:?}");
        }
        let mut mine = self.early_ids.clone();
        mine.extend(self.pending.values().filter_map(|p| p.id).take(8));
        let o = or_skip!(self.other.as_mut());
        if !mine.is_empty() {
            let id = mine[self.rng.below(mine.len() as u64) as usize];
            assert!(
                !o.ring.cancel(id),
                "the other ring accepted a cancel with this ring's id {id:?}"
            );
        }
        o.ring.poll().unwrap();
        for tk in &o.tickets {
            assert!(
                !o.ring.is_done(tk),
                "the other ring's never-ending op {:?} ended (cancelled by a foreign id?)",
                tk.id()
            );
        }
        let ring = self.ring.as_ref().unwrap();
        assert!(
            o.tickets.iter().all(|tk| !ring.is_done(tk)),
            "a ticket of the other ring is done on this one"
        );
    }

    /// End the other ring: its own ids cancel its operations, each completes Cancelled.
    fn finish_other(&mut self) {
        let mut o = or_skip!(self.other.take());
        for &id in &o.ids {
            assert!(
                o.ring.cancel(id),
                "the other ring refused its own id {id:?}"
            );
        }
        for tk in std::mem::take(&mut o.tickets) {
            let c = o.ring.wait(tk).unwrap();
            assert!(
                c.error().is_some_and(|e| e.is_cancelled()),
                "the other ring's op ended {:?}",
                c.result()
            );
        }
        common::check_teardown(&o.ring, &[]);
    }

    // ---- handle threads ----

    fn start_handle_threads(&mut self) {
        let n = 1 + self.rng.below(2) as usize;
        let h = self.ring().handle().unwrap();
        for th in 0..n {
            let counts = Arc::new(HandleCounts::default());
            self.handle_counts.push(counts.clone());
            let (h, q, sink, stop) = (
                h.clone(),
                self.handle_q.clone(),
                self.handle_sink.clone(),
                self.handle_stop.clone(),
            );
            let pool = self.w.pools[0].clone();
            let file = self.w.file.clone();
            let t = self.file_t;
            let mut rng = Rng::new(self.rng.next());
            let ops = 200 + rng.below(1500);
            self.w.totals.handle_ops += ops;
            self.handle_threads.push(std::thread::spawn(move || {
                handle_thread(th as u64, ops, h, q, sink, pool, file, t, counts, stop, rng)
            }));
        }
    }

    fn join_handle_threads(&mut self) {
        self.handle_stop.store(true, Ordering::Relaxed);
        let end = Instant::now() + Duration::from_secs(20);
        while self.handle_threads.iter().any(|t| !t.is_finished()) {
            assert!(Instant::now() < end, "handle threads did not finish");
            if let Some(r) = self.ring.as_mut() {
                r.run_once(Some(Duration::from_micros(500))).unwrap();
            }
            self.drain_handles();
        }
        for t in self.handle_threads.drain(..) {
            if let Err(p) = t.join() {
                resume_unwind(p);
            }
        }
    }

    // ---- readers and drivers ----

    fn driver_action(&mut self) {
        if self.drivers.is_empty() || (self.drivers.len() < 3 && self.rng.chance(20)) {
            self.start_driver();
            return;
        }
        let i = self.rng.below(self.drivers.len() as u64) as usize;
        if self.rng.chance(5) {
            // Dropped mid-flight: its operations are cancelled or complete, and every slot
            // comes back once the kernel returns it (checked when the ring is idle).
            let d = self.drivers.swap_remove(i);
            if let Driver::Reader { reader, .. } = &d {
                self.w.totals.readers_dropped += 1;
                let m = reader.is_multishot();
                self.event(format!("drop a reader mid-flight (multishot {m})"));
            } else {
                let desc = describe(&d);
                self.event(format!("drop a driver mid-flight: {desc}"));
            }
            // Its pipe stays open and silent until the episode's end.
            if let Some(tx) = drop_driver(d) {
                self.silent.push(tx);
            }
            return;
        }
        if self.rng.chance(3) {
            if let Driver::Reader {
                reader, stopped, ..
            } = &mut self.drivers[i]
            {
                reader.cancel();
                *stopped = true;
                self.event("stop a reader".into());
                return;
            }
        }
        if self.step_driver(i) {
            let d = self.drivers.swap_remove(i);
            self.finish_driver(d);
        }
    }

    fn start_driver(&mut self) {
        let kind = self.rng.below(5);
        self.event(format!("start driver kind {kind}"));
        let d = match kind {
            0 | 1 => self.start_reader(kind == 0),
            2 => self.start_split(),
            3 => self.start_dma(),
            _ => self.start_fifo(),
        };
        if let Some(d) = d {
            self.w.totals.drivers += 1;
            self.drivers.push(d);
        }
    }

    fn start_reader(&mut self, stream: bool) -> Option<Driver> {
        let pool = self.w.pools[2].clone();
        let got = Arc::new(AtomicU64::new(0));
        let fails = Arc::new(Mutex::new(Vec::new()));
        let f2 = fails.clone();
        let on_failed = move |e: &Error| {
            f2.lock().unwrap().push(*e);
            Restart::No
        };
        let on_read = |c: &RCtx, b: PoolBuf, off: u64| {
            let o = off as usize;
            if !(o + b.len() <= c.data.len() && b.data() == &c.data[o..o + b.len()]) {
                panic!(
                    "reader (stream {}, positional {}) delivered {} bytes at {off} that are not \
                     the source's: {}",
                    c.id,
                    c.positional,
                    b.len(),
                    mismatch(&c.data, b.data(), o)
                );
            }
            if !c.positional {
                let before = c.got.load(Ordering::Relaxed);
                assert_eq!(before, off, "stream delivery out of order");
            }
            c.got.fetch_add(b.len() as u64, Ordering::Relaxed);
        };
        if stream {
            let (rx, tx) = pipe();
            let r = self.ring().register(rx).unwrap();
            let len = 1 + self.rng.below(60_000) as usize;
            let data = Arc::new(payload(self.rng.next(), len));
            let reads = [
                StreamReads::Auto,
                StreamReads::Multishot,
                StreamReads::SingleShot,
            ][self.rng.weighted(&[50, 30, 20])];
            let id = register_stream(&data);
            let ctx = RCtx {
                data: data.clone(),
                got: got.clone(),
                positional: false,
                id,
            };
            let reader = ContinuousReader::builder(r, &pool)
                .stream_reads(reads)
                .on_read(move |b, off| on_read(&ctx, b, off))
                .on_failed(on_failed)
                .build(self.ring());
            let reader = match reader {
                Ok(r) => r,
                Err(e) => {
                    assert!(
                        matches!(e.kind(), ErrorKind::PoolExhausted)
                            || (reads == StreamReads::Multishot
                                && matches!(e.kind(), ErrorKind::Unsupported { .. })),
                        "stream reader ({reads:?}): {e:?}"
                    );
                    return None;
                }
            };
            self.event(format!(
                "reader: stream {id} ({len} bytes, {reads:?}, multishot {}) on {r:?}",
                reader.is_multishot()
            ));
            let mut wr = Rng::new(self.rng.next());
            let quit = Arc::new(AtomicBool::new(false));
            let q2 = quit.clone();
            set_nonblocking(tx.as_raw_fd());
            let handle = std::thread::spawn(move || {
                let mut at = 0;
                while at < data.len() && !q2.load(Ordering::Relaxed) {
                    let n = (1 + wr.below(9000) as usize).min(data.len() - at);
                    // SAFETY: valid buffer and descriptor.
                    let r = unsafe { libc::write(tx.as_raw_fd(), data[at..].as_ptr().cast(), n) };
                    if r < 0 {
                        // The pipe is full (a stopped or dropped reader): wait or quit.
                        std::thread::sleep(Duration::from_micros(100));
                        continue;
                    }
                    at += r as usize;
                    if wr.chance(50) {
                        std::thread::sleep(Duration::from_micros(wr.below(300)));
                    }
                }
                // All written: the end of the stream. Told to quit early: the pipe stays
                // open (silent) for the caller.
                (at < data.len()).then_some(tx)
            });
            let writer = Writer { handle, quit };
            self.w.totals.readers += 1;
            Some(Driver::Reader {
                reader: Box::new(reader),
                writer: Some(writer),
                expect: len as u64,
                got,
                fails,
                stopped: false,
            })
        } else {
            let start = self.rng.below(FILE_SIZE);
            let end = start + self.rng.below(FILE_SIZE);
            let ctx = RCtx {
                data: self.w.file.clone(),
                got: got.clone(),
                positional: true,
                id: 0,
            };
            let pending = 1 + self.rng.below(4) as u32;
            let mut b = ContinuousReader::builder(self.file_t, &pool)
                .pending_reads(pending)
                .range(start, end)
                .transfer_len(1 + self.rng.below(BS as u64) as u32);
            if self.rng.chance(40) {
                b = b.ordered(true);
            }
            let reader = b
                .on_read(move |b, off| on_read(&ctx, b, off))
                .on_failed(on_failed)
                .build(self.ring())
                .unwrap();
            self.w.totals.readers += 1;
            let expect = end.min(FILE_SIZE).saturating_sub(start);
            Some(Driver::Reader {
                reader: Box::new(reader),
                writer: None,
                expect,
                got,
                fails,
                stopped: false,
            })
        }
    }

    fn start_split(&mut self) -> Option<Driver> {
        let off = self.rng.below(FILE_SIZE);
        let len = 1 + self.rng.below(6 * BS as u64);
        let mut cfg = if self.rng.chance(50) {
            SplitConfig::new()
                .mode(Mode::Serial)
                .max_chunk(1 + self.rng.below(3 * BS as u64))
        } else {
            SplitConfig::new().mode(Mode::Parallel {
                max_in_flight: 1 + self.rng.below(4) as u32,
            })
        };
        // A huge deadline means none: the read completes normally.
        if self.rng.chance(30) {
            cfg = cfg.deadline(HUGE[self.rng.below(HUGE.len() as u64) as usize]);
        }
        let pool = self.w.pools[1].clone();
        let job = Job::Read {
            src: self.file_t,
            offset: off,
            len,
        };
        match SplitDriver::new(self.ring(), &pool, job, cfg) {
            Ok(d) => {
                let h = ChunkCheck {
                    file: self.w.file.clone(),
                    bytes: Arc::new(AtomicU64::new(0)),
                };
                let d = h.hook(d);
                Some(Driver::Split { d, off, len, h })
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::PoolExhausted, "split: {e:?}");
                None
            }
        }
    }

    fn start_dma(&mut self) -> Option<Driver> {
        let pool = self.w.pools[1].clone();
        let mut sg = SgList::new();
        let mut extents = Vec::new();
        let mut at = self.rng.below(FILE_SIZE / 2);
        for _ in 0..1 + self.rng.below(3) {
            let len = 1 + self.rng.below(3 * BS as u64);
            if sg.push_extent(&pool, at, len).is_err() {
                return None;
            }
            extents.push((at, len));
            at += len + self.rng.below(2 * BS as u64);
        }
        let cfg = DmaConfig::new()
            .max_transfer(1 + self.rng.below(4 * BS as u64))
            .max_in_flight(1 + self.rng.below(3) as u32);
        let t = self.file_t;
        // A huge deadline means none: the transaction completes normally.
        let deadline = if self.rng.chance(30) {
            Some(HUGE[self.rng.below(HUGE.len() as u64) as usize])
        } else {
            None
        };
        let mut b = DmaDriver::builder(t, sg, Direction::Read).config(cfg);
        if let Some(d) = deadline {
            b = b.deadline(d);
        }
        let d = b.build(self.ring()).map_err(|r| r.error()).unwrap();
        Some(Driver::Dma {
            d: Box::new(d),
            extents,
            out: None,
        })
    }

    fn start_fifo(&mut self) -> Option<Driver> {
        let (rx, tx) = pipe();
        set_nonblocking(rx.as_raw_fd());
        let r = self.ring().register(rx).unwrap();
        let mut f = FifoReceiver::new(self.ring.as_ref().unwrap(), r).unwrap();
        let b = self.w.pools[0].try_get().ok()?;
        let len = 1 + self.rng.below(b.capacity() as u64) as usize;
        let stream = payload(self.rng.next(), len);
        let id = register_stream(&Arc::new(stream.clone()));
        self.event(format!("fifo: stream {id} ({len} bytes) on {r:?}"));
        if self.rng.chance(30) {
            // A huge deadline means none: it never ends TimedOut (check_fifo).
            let d = HUGE[self.rng.below(HUGE.len() as u64) as usize];
            f.receive_with_deadline(self.ring(), b, len, d)
                .map_err(|r| r.error)
                .unwrap();
        } else {
            f.receive(self.ring(), b, len).map_err(|r| r.error).unwrap();
        }
        Some(Driver::Fifo {
            f,
            tx,
            len,
            sent: 0,
            stream,
        })
    }

    /// Advance driver `i`; true once it is done.
    fn step_driver(&mut self, i: usize) -> bool {
        let ring = self.ring.as_mut().unwrap();
        match &mut self.drivers[i] {
            Driver::Reader { reader, .. } => {
                match catch_unwind(AssertUnwindSafe(|| reader.drive(ring))) {
                    Ok(r) => {
                        let done = r.unwrap().is_some();
                        assert_eq!(ring.stats().stale_cqes, 0, "stale CQEs: {:?}", ring.stats());
                        done
                    }
                    // A delivery check failed: add what the ring knows.
                    Err(p) => panic!("{}; ring {:?}", panic_text(&p), ring.stats()),
                }
            }
            Driver::Split { d, .. } => {
                d.process(ring).unwrap();
                d.is_complete()
            }
            Driver::Dma { d, out, .. } => {
                if let Some(o) = d.process(ring).unwrap() {
                    *out = Some(o);
                }
                out.is_some()
            }
            Driver::Fifo {
                f,
                tx,
                len,
                sent,
                stream,
            } => {
                if *sent < *len && self.rng.chance(50) {
                    let n = (1 + self.rng.below(*len as u64) as usize).min(*len - *sent);
                    write_fd(tx.as_raw_fd(), &stream[*sent..*sent + n]);
                    *sent += n;
                }
                if self.rng.chance(3) {
                    f.cancel(ring);
                }
                match f.process(ring).unwrap() {
                    Some(got) => {
                        check_fifo(&got, *len, *sent, stream);
                        true
                    }
                    None => false,
                }
            }
        }
    }

    /// Check a finished driver's outcome.
    fn finish_driver(&mut self, d: Driver) {
        match d {
            Driver::Reader {
                reader,
                writer,
                expect,
                got,
                fails,
                stopped,
            } => {
                drop(reader);
                if let Some(w) = writer {
                    w.finish();
                }
                let fails = fails.lock().unwrap().clone();
                assert!(fails.is_empty(), "reader failed: {fails:?}");
                let got = got.load(Ordering::Relaxed);
                if stopped {
                    assert!(
                        got <= expect,
                        "stopped reader delivered {got} of {expect} bytes"
                    );
                } else {
                    let st = self.ring.as_ref().map(|r| r.stats());
                    assert_eq!(
                        got, expect,
                        "reader delivered the wrong byte count (ring {st:?})"
                    );
                }
            }
            Driver::Split { d, off, len, h } => {
                let c = d.outcome().expect("complete");
                let want = len.min(FILE_SIZE - off);
                assert_eq!(
                    (c.status, c.bytes),
                    (Ok(()), want),
                    "split read at {off} len {len}: {c:?}"
                );
                assert_eq!(h.bytes.load(Ordering::Relaxed), want, "split: chunk bytes");
            }
            Driver::Dma { extents, out, .. } => {
                let (c, sg) = out.expect("complete, buffers back after the final transfer");
                let want: u64 = extents
                    .iter()
                    .map(|&(o, l)| l.min(FILE_SIZE.saturating_sub(o)))
                    .sum();
                assert_eq!(
                    (c.status, c.bytes),
                    (Ok(()), want),
                    "dma {extents:?}: {c:?}"
                );
                for (seg, b) in sg.iter() {
                    let o = seg.device_offset;
                    assert!(
                        b.data() == file_at(&self.w.file, o, b.len()),
                        "dma segment at {o} differs"
                    );
                }
            }
            // Checked when it completed (step_driver).
            Driver::Fifo { .. } => {}
        }
    }
}

/// A thread feeding a stream reader's pipe.
struct Writer {
    /// Hands the pipe's write end back if it quit before the end of the stream.
    handle: std::thread::JoinHandle<Option<OwnedFd>>,
    quit: Arc<AtomicBool>,
}

impl Writer {
    /// Stop writing; the pipe's write end, still open, if the stream did not end.
    fn finish(self) -> Option<OwnedFd> {
        self.quit.store(true, Ordering::Relaxed);
        match self.handle.join() {
            Ok(tx) => tx,
            Err(p) => resume_unwind(p),
        }
    }
}

/// The context of a continuous reader in the harness.
struct RCtx {
    data: Arc<Vec<u8>>,
    got: Arc<AtomicU64>,
    positional: bool,
    /// The stream's number in [`STREAMS`] (0: the verify file).
    id: u64,
}

/// The byte streams of recent stream readers and FIFO receivers, by number: where
/// misdelivered bytes came from is worth knowing.
static STREAMS: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>> = Mutex::new(VecDeque::new());
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

fn register_stream(data: &Arc<Vec<u8>>) -> u64 {
    let id = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
    let mut s = STREAMS.lock().unwrap();
    if s.len() == 64 {
        s.pop_front();
    }
    s.push_back((id, data.clone()));
    id
}

/// Describe how `got` (delivered as `want[at..]`) differs: the first differing byte, and
/// where its bytes are found (elsewhere in the source, in another recent stream).
fn mismatch(want: &[u8], got: &[u8], at: usize) -> String {
    let end = (at + got.len()).min(want.len());
    let first = (at..end)
        .find(|&i| want[i] != got[i - at])
        .map_or(end - at, |i| i - at);
    let mut out = format!("first difference at byte {first} of {}", got.len());
    if got.iter().all(|&x| x == 0) {
        out += "; all zeros";
    }
    let probe = &got[first..(first + 16).min(got.len())];
    if probe.len() < 8 {
        return out;
    }
    let find = |hay: &[u8]| hay.windows(probe.len()).position(|w| w == probe);
    if let Some(p) = find(want) {
        out += &format!("; bytes {first}.. are the source's bytes at {p}");
    }
    for (id, d) in STREAMS.lock().unwrap().iter() {
        if let Some(p) = find(d) {
            out += &format!("; found in stream {id} at {p} (of {})", d.len());
        }
    }
    out
}

fn check_fifo(got: &iocomplete::FifoReceived, len: usize, sent: usize, stream: &[u8]) {
    let n = got.bytes();
    assert_eq!(got.buf.len(), n);
    assert!(
        got.buf.data() == &stream[..n],
        "fifo bytes differ from the stream"
    );
    match got.status() {
        FifoStatus::Full => assert_eq!(n, len),
        FifoStatus::Cancelled => assert!(n <= sent.min(len)),
        s => panic!("fifo receive ended {s:?} after {n} of {len} bytes"),
    }
}

fn describe(d: &Driver) -> String {
    match d {
        Driver::Reader {
            reader,
            expect,
            got,
            ..
        } => format!(
            "reader (expects {expect}, got {}): {:?}",
            got.load(Ordering::Relaxed),
            reader.debug()
        ),
        Driver::Split { d, off, len, .. } => format!("split read {off}+{len}: {d:?}"),
        Driver::Dma { d, extents, .. } => format!("dma {extents:?}: {d:?}"),
        Driver::Fifo { f, len, sent, .. } => format!("fifo {sent}/{len} sent: {f:?}"),
    }
}

/// Drop a driver; the pipe of a stream reader or a FIFO receiver stays open (returned):
/// only the driver's own cancels can end its reads and waits then.
fn drop_driver(d: Driver) -> Option<OwnedFd> {
    match d {
        Driver::Reader { reader, writer, .. } => {
            drop(reader);
            writer.and_then(Writer::finish)
        }
        Driver::Fifo { f, tx, .. } => {
            drop(f);
            Some(tx)
        }
        other => {
            drop(other);
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn handle_thread(
    th: u64,
    ops: u64,
    h: RingHandle,
    q: Arc<CompletionQueue<Completion>>,
    sink: Arc<Mutex<Vec<Completion>>>,
    pool: BufferPool,
    file: Arc<Vec<u8>>,
    t: Target,
    counts: Arc<HandleCounts>,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
) {
    let mut seq = 0u64;
    while seq < ops && !stop.load(Ordering::Relaxed) {
        if counts.outstanding.load(Ordering::Relaxed) >= 48 {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        let tag = HANDLE_BIT | (th << 40) | seq;
        let Some(op) = handle_op(tag, t, &pool) else {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        };
        seq += 1;
        let route = [Route::Queue, Route::Then, Route::Future, Route::Detach]
            [rng.weighted(&[40, 25, 15, 20])];
        counts.submitted[route as usize].fetch_add(1, Ordering::Relaxed);
        match route {
            Route::Queue => {
                counts.outstanding.fetch_add(1, Ordering::Relaxed);
                h.submit_to(op, &q);
            }
            Route::Then => {
                counts.outstanding.fetch_add(1, Ordering::Relaxed);
                let s = sink.clone();
                h.submit_then(op, move |c| s.lock().unwrap().push(c));
            }
            Route::Future => {
                let c = common::block_on(h.submit_future(op));
                assert_eq!(
                    c.tag(),
                    tag,
                    "a future resolved with another op's completion"
                );
                check_handle(&c, &file);
                counts.future_done.fetch_add(1, Ordering::Relaxed);
            }
            _ => h.detach(op),
        }
        if rng.chance(10) {
            std::thread::yield_now();
        }
    }
}

impl Episode<'_> {
    /// Drain every route once (all queues, the routine sink, futures, the ring's FIFO,
    /// finished tickets, handle deliveries).
    fn drain_all(&mut self) {
        for i in 0..self.queues.len() {
            assert_eq!(
                self.queues[i].capacity(),
                self.queue_caps[i],
                "queue {i}: capacity changed"
            );
            while let Some(c) = self.queues[i].pop() {
                self.deliver(c, Route::Queue);
            }
        }
        let v: Vec<Completion> = std::mem::take(&mut *self.sink.lock().unwrap());
        for c in v {
            self.deliver(c, Route::Then);
        }
        self.poll_futures();
        if self.ring.is_some() {
            while let Some(c) = self.ring().pop_completion() {
                self.deliver(c, Route::Ring);
            }
            self.collect_tickets();
        }
        self.drain_handles();
    }

    fn live_pending(&self) -> usize {
        self.pending.values().filter(|p| !p.abandoned).count()
    }

    /// End the episode normally: everything completes, then the ring is dropped.
    fn end_normal(&mut self) {
        self.event("end".into());
        self.join_handle_threads();
        // Enough records for every read that may still wait on the pipe, plus one for the
        // polls.
        let unseen_pipe = self
            .pending
            .values()
            .filter(|p| matches!(p.kind, Kind::PipeRead))
            .count() as u64;
        self.feed_pipe(unseen_pipe + 1);
        // Timers that never fire end by a cancel (delivered or not).
        let never: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(p.kind, Kind::NeverTimeout))
            .map(|(t, _)| *t)
            .collect();
        for t in never {
            self.cancel_tag(t);
        }
        // Once the drivers are done everything in flight completes by itself: then, now and
        // then, run_until_idle with the queues left as they are (full ones included).
        let mut until_idle = self.rng.chance(50);
        let end = Instant::now() + Duration::from_secs(30);
        let (mut idle_rounds, mut last_progress) = (0, 0);
        loop {
            self.beat();
            if until_idle && self.drivers.is_empty() {
                until_idle = false;
                let full = self
                    .queues
                    .iter()
                    .filter(|q| q.len() >= q.capacity())
                    .count();
                let ring = self.ring.as_ref().unwrap();
                let (inf, pend) = (ring.in_flight(), ring.pending());
                let live: Vec<_> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| !p.abandoned)
                    .take(6)
                    .collect();
                self.note(format!(
                    "run_until_idle with {full} full queues; in flight {inf}, op table {pend}, \
                     live {live:?}"
                ));
                self.ring().run_until_idle().unwrap();
                let ring = self.ring.as_ref().unwrap();
                assert_eq!(
                    ring.in_flight(),
                    0,
                    "run_until_idle returned with ops in flight"
                );
            }
            // Finish the drivers.
            let mut i = 0;
            while i < self.drivers.len() {
                if let Driver::Fifo {
                    tx,
                    len,
                    sent,
                    stream,
                    ..
                } = &mut self.drivers[i]
                {
                    if *sent < *len {
                        write_fd(tx.as_raw_fd(), &stream[*sent..]);
                        *sent = *len;
                    }
                }
                if self.step_driver(i) {
                    let d = self.drivers.swap_remove(i);
                    self.finish_driver(d);
                } else {
                    i += 1;
                }
            }
            self.ring()
                .run_once(Some(Duration::from_millis(1)))
                .unwrap();
            self.drain_all();
            let ring = self.ring.as_ref().unwrap();
            let idle = self.drivers.is_empty() && ring.in_flight() == 0 && ring.pending() == 0;
            if idle && self.live_pending() == 0 {
                break;
            }
            // Idle, every route drained again and again, and still waiting: lost.
            let progress =
                self.w.totals.delivered.iter().sum::<u64>() + self.handle_seen.len() as u64;
            idle_rounds = if idle && progress == last_progress {
                idle_rounds + 1
            } else {
                0
            };
            last_progress = progress;
            if idle_rounds > 50 {
                let live: Vec<_> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| !p.abandoned)
                    .take(10)
                    .collect();
                panic!(
                    "episode end: the ring is idle but {} completions never arrived: {live:?}",
                    self.live_pending()
                );
            }
            if Instant::now() > end {
                // Which of ours is still in flight: the ring accepts a cancel only for those.
                let ids: Vec<(u64, OpId)> = self
                    .pending
                    .iter()
                    .filter_map(|(t, p)| Some((*t, p.id?)))
                    .collect();
                let ring = self.ring.as_mut().unwrap();
                let stuck: Vec<_> = ids
                    .into_iter()
                    .filter(|(_, id)| ring.cancel(*id))
                    .map(|(t, _)| (t, &self.pending[&t]))
                    .collect();
                let stuck = if stuck.is_empty() {
                    "none of the harness's own operations (a driver's or reader's)".to_string()
                } else {
                    format!("{stuck:?}")
                };
                let ring = self.ring.as_ref().unwrap();
                let live: Vec<_> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| !p.abandoned)
                    .take(10)
                    .collect();
                let drivers: Vec<String> = self.drivers.iter().map(describe).collect();
                let given_up: Vec<_> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| {
                        p.abandoned
                            && matches!(p.kind, Kind::NeverTimeout | Kind::PipeRead | Kind::Poll)
                    })
                    .take(20)
                    .collect();
                panic!(
                    "episode end: not idle after 30 s: still in flight {stuck}; given up on {given_up:?}; {} ops pending ({live:?}), ring in_flight {} \
                     pending {}, drivers {drivers:?}, stats {:?}, pools {:?}",
                    self.live_pending(),
                    ring.in_flight(),
                    ring.pending(),
                    ring.stats(),
                    self.w.pools.iter().map(|p| p.stats()).collect::<Vec<_>>()
                );
            }
        }
        let s = self.ring.as_ref().unwrap().stats();
        assert_eq!(
            s.submitted, s.completed,
            "ring: not every op completed exactly once: {s:?}"
        );
        assert_eq!(s.stale_cqes, 0, "stale CQEs: {s:?}");
        self.w.totals.ops += s.submitted;
        self.check_handle_totals();
        // Every slot is back while the ring lives: dropped readers (multishot ones too)
        // gave theirs back once the kernel returned them.
        for round in 0.. {
            let all = self.w.pools.iter().all(|p| {
                let st = p.stats();
                st.free == st.total
            });
            if all {
                break;
            }
            if round == 20 {
                let pools: Vec<_> = self.w.pools.iter().map(|p| p.stats()).collect();
                panic!("the ring is idle but pool slots are missing: {pools:?}");
            }
            self.ring()
                .run_once(Some(Duration::from_millis(1)))
                .unwrap();
        }
        self.finish_other();
        self.remember_ids();
        drop(self.ring.take());
        self.finish_checks("normal end");
    }

    /// Drop the ring with operations in flight, while handle threads may still submit
    /// (to a queue that may be full), and completion queues may be full and undrained:
    /// every completion owed to a queue, a routine or a future is delivered exactly once.
    fn drop_mid_flight(&mut self) {
        if self.rng.chance(60) {
            // Overfill a queue first: more completions owed to it than it holds.
            let qi = self.rng.below(self.queues.len() as u64) as usize;
            let n = self.queue_caps[qi].min(64) + 1 + self.rng.below(20) as usize;
            self.event(format!("overfill queue {qi} with {n} ops"));
            for _ in 0..n {
                let Some((kind, op)) = self.make_op(Route::Queue) else {
                    continue;
                };
                self.submit_to_queue(kind, op, qi);
            }
            if self.rng.chance(50) {
                self.ring().poll().unwrap();
            }
        }
        self.event("drop the ring mid-flight".into());
        self.w.totals.ring_drops_mid_flight += 1;
        // Tickets and the ring's own FIFO die with the ring; detached writes may be
        // cancelled.
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(p.route, Route::Ticket | Route::Ring))
            .map(|(t, _)| *t)
            .collect();
        for t in lost {
            self.abandon(t);
        }
        for p in self.pending.values() {
            if let (true, Kind::ScratchWrite { off, bytes }) = (p.abandoned, &p.kind) {
                let (a, b) = (*off as usize / BS, (*off as usize + bytes.len() - 1) / BS);
                for blk in a..=b {
                    self.w.unknown[blk] = true;
                }
            }
        }
        self.tickets.clear();
        let s = self.ring.as_ref().unwrap().stats();
        self.w.totals.ops += s.submitted;
        self.remember_ids();
        drop(self.ring.take());
        self.beat();
        // Each queue holds exactly what is still owed to it, overflow included, and its
        // capacity did not change.
        let mut overflowed = 0;
        for (i, q) in self.queues.iter().enumerate() {
            let owed = self
                .pending
                .values()
                .filter(|p| p.route == Route::Queue && !p.abandoned && p.queue == i)
                .count();
            assert_eq!(
                q.len(),
                owed,
                "after the ring's drop, queue {i} (capacity {}) holds {} completions, {owed} owed",
                self.queue_caps[i],
                q.len()
            );
            assert_eq!(
                q.capacity(),
                self.queue_caps[i],
                "queue {i}: capacity changed"
            );
            overflowed += owed.saturating_sub(self.queue_caps[i]);
        }
        if overflowed > 0 {
            self.w.totals.drops_with_overflow += 1;
            self.w.totals.overflowed_at_drop += overflowed as u64;
        }
        self.submit_after_the_ring();
        for d in std::mem::take(&mut self.drivers) {
            drop_driver(d);
        }
        self.join_handle_threads();
        self.drain_all();
        self.finish_other();
        let live: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, p)| !p.abandoned)
            .take(10)
            .collect();
        assert!(
            live.is_empty(),
            "after the ring's drop, completions never delivered: {live:?}"
        );
        self.check_handle_totals();
        self.finish_checks("ring dropped mid-flight");
    }

    /// Submissions through a handle whose ring is gone: each completes at once, Cancelled,
    /// by its route — a full queue included — with its buffers back.
    fn submit_after_the_ring(&mut self) {
        let h = or_skip!(self.late_handle.take());
        assert!(h.is_closed(), "a handle of a dropped ring is not closed");
        let q = Arc::new(CompletionQueue::new(1));
        let n = 1 + self.rng.below(6);
        self.note(format!("{n} submissions after the ring's drop"));
        self.w.totals.after_the_ring += n + 3;
        let t = self.file_t;
        for i in 0..n {
            let op = match self.w.pools[1].try_get() {
                Ok(b) if i % 2 == 1 => Op::read(t, 0, b),
                _ => Op::nop(),
            };
            h.submit_to(op.tag(i), &q);
        }
        assert_eq!(
            q.len(),
            n as usize,
            "submit_to after the ring's drop: queue length"
        );
        assert_eq!(q.capacity(), 1);
        let sink = Arc::new(Mutex::new(Vec::new()));
        let s2 = sink.clone();
        h.submit_then(Op::nop().tag(n), move |c| s2.lock().unwrap().push(c));
        let mut f = h.submit_future(Op::nop().tag(n + 1));
        h.detach(Op::nop());
        let mut got: Vec<Completion> = std::iter::from_fn(|| q.pop()).collect();
        got.append(&mut sink.lock().unwrap());
        got.push(noop_poll(&mut f).expect("a future of a dropped ring's handle is not ready"));
        let tags: Vec<u64> = got.iter().map(|c| c.tag()).collect();
        assert_eq!(
            tags,
            (0..n + 2).collect::<Vec<_>>(),
            "after the ring's drop"
        );
        for c in &got {
            assert!(
                c.error().is_some_and(|e| e.is_cancelled()),
                "#{}: {:?} after the ring's drop",
                c.tag(),
                c.result()
            );
        }
    }

    /// Keep some of this ring's ids for later episodes (a cancel with them must do
    /// nothing on another ring).
    fn remember_ids(&mut self) {
        let mut ids = self.early_ids.clone();
        ids.extend(self.pending.values().filter_map(|p| p.id).take(8));
        let old = &mut self.w.old_ids;
        old.extend(ids);
        if old.len() > 64 {
            old.drain(..old.len() - 64);
        }
    }

    fn check_handle_totals(&self) {
        for (th, c) in self.handle_counts.iter().enumerate() {
            let seen = self
                .handle_seen
                .iter()
                .filter(|t| ((*t >> 40) & 0xff) as usize == th)
                .count() as u64;
            let sub = |r: Route| c.submitted[r as usize].load(Ordering::Relaxed);
            assert_eq!(
                seen,
                sub(Route::Queue) + sub(Route::Then),
                "handle thread {th}: queue/routine deliveries"
            );
            assert_eq!(
                c.future_done.load(Ordering::Relaxed),
                sub(Route::Future),
                "handle thread {th}: futures"
            );
        }
    }

    /// After the ring is gone: every slot back, the scratch file as modelled, every pipe
    /// record read at most once and none lost but by a read whose completion was not seen.
    fn finish_checks(&mut self, when: &str) {
        self.w.check_pools(when);
        self.w.check_scratch(when, &[]);
        // Resynchronise the model on the blocks whose content was unknowable.
        let mut now = vec![0u8; SCRATCH_BLOCKS * BS];
        File::open(&self.w.scratch_path)
            .unwrap()
            .read_exact_at(&mut now, 0)
            .unwrap();
        for b in 0..SCRATCH_BLOCKS {
            if self.w.unknown[b] {
                self.w.model[b * BS..(b + 1) * BS].copy_from_slice(&now[b * BS..(b + 1) * BS]);
                self.w.unknown[b] = false;
            }
        }
        for (f, c) in self.cursors.iter().enumerate() {
            let now = std::fs::read(&self.w.cursor_paths[f]).unwrap();
            if c.unknown {
                self.w.cursor_models[f] = now;
            } else {
                assert!(
                    now == self.w.cursor_models[f],
                    "{when}: cursor file {f} differs from its model ({} vs {} bytes)",
                    now.len(),
                    self.w.cursor_models[f].len()
                );
            }
        }
        let left = read_leftover(self.pipe_rx_dup.as_raw_fd());
        assert_eq!(
            left.len() % REC,
            0,
            "{when}: a partial record left in the pipe"
        );
        let mut left_recs = HashSet::new();
        for r in left.chunks(REC) {
            let rec = u64::from_le_bytes(r.try_into().unwrap());
            assert!(
                rec < self.records_written,
                "{when}: record {rec} never written"
            );
            assert!(
                !self.records_seen.contains(&rec),
                "{when}: record {rec} both read and left"
            );
            assert!(
                left_recs.insert(rec),
                "{when}: record {rec} twice in the pipe"
            );
        }
        let missing =
            self.records_written - self.records_seen.len() as u64 - left_recs.len() as u64;
        assert!(
            missing <= self.pipe_reads_unseen,
            "{when}: {missing} pipe records lost, but only {} reads could have taken them unseen \
             (a cancelled or timed-out read consumed a record)",
            self.pipe_reads_unseen
        );
        self.w.totals.episodes += 1;
        for h in &mut self.w.history {
            h.clear();
        }
    }
}

/// The message of a caught panic.
fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// What is left in a pipe (without blocking).
fn read_leftover(fd: RawFd) -> Vec<u8> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) }, 0);
    let mut buf = vec![0u8; n as usize];
    let mut at = 0;
    while at < buf.len() {
        // SAFETY: valid buffer; the pipe holds at least this many bytes.
        let r = unsafe { libc::read(fd, buf[at..].as_mut_ptr().cast(), buf.len() - at) };
        assert!(r > 0);
        at += r as usize;
    }
    buf
}

fn run_episode(w: &mut World, seed: u64, ops: u64, shared: Arc<Shared>) {
    shared.events.lock().unwrap().clear();
    let mut ep = Episode::new(w, seed, ops, shared);
    ep.event(format!(
        "episode {seed:#x} ({ops} ops; replay it alone: IOCOMPLETE_API_SEQ_EPISODE={seed:#x} \
         IOCOMPLETE_API_SEQ_EPISODE_OPS={ops}): {:?}",
        ep.ring.as_ref().unwrap().capabilities()
    ));
    if ep.sqpoll {
        ep.w.totals.sqpoll_episodes += 1;
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        if ep.rng.chance(50) {
            ep.start_other_ring();
        }
        if ep.rng.chance(30) {
            ep.start_handle_threads();
        }
        if ep.rng.chance(40) {
            ep.late_handle = Some(ep.ring().handle().unwrap());
        }
        let drop_at = if ep.rng.chance(35) {
            Some(1 + ep.rng.below(ops - 1))
        } else {
            None
        };
        while ep.ops_left > 0 {
            ep.beat();
            if drop_at == Some(ep.ops_left) {
                ep.drop_mid_flight();
                return None;
            }
            match ep.rng.weighted(&[60, 14, 12, 3, 1, 1, 5, 2, 1, 1]) {
                0 => ep.submit_random(),
                1 => ep.drive(),
                2 => ep.drain_some(),
                3 => ep.cancel_random(),
                4 => ep.drop_ticket(),
                5 => ep.drop_future(),
                6 => {
                    let in_pipe = ep.records_written - ep.records_seen.len() as u64;
                    if in_pipe < 4000 {
                        let n = 1 + ep.rng.below(4);
                        ep.feed_pipe(n);
                    }
                }
                7 => ep.driver_action(),
                8 => ep.foreign_cancel(),
                _ => ep.huge_wait(),
            }
        }
        ep.end_normal();
        Some(())
    }));
    match result {
        Ok(_) => {}
        Err(p) => {
            ep.handle_stop.store(true, Ordering::Relaxed);
            eprintln!("{}", ep.shared.last_actions());
            // Leave the ring and threads behind: the failure is what matters.
            std::mem::forget(ep);
            resume_unwind(p);
        }
    }
}

#[test]
fn random_api_sequences() {
    let seed = env_u64("IOCOMPLETE_API_SEQ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let target = env_u64("IOCOMPLETE_API_SEQ_OPS").unwrap_or(100_000);
    let budget = Duration::from_secs(env_u64("IOCOMPLETE_API_SEQ_SECS").unwrap_or(150));
    eprintln!("api_sequence: seed {seed}, {target} ops (replay: IOCOMPLETE_API_SEQ_SEED={seed})");
    let shared = Arc::new(Shared::default());
    let sh = shared.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("api-seq".into())
        .spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(|| run(seed, target, budget, sh)));
            let _ = tx.send(r);
        })
        .unwrap();
    // A watchdog: the run must end within its budget (plus a margin), and must not stop
    // making progress for STALL; either way it fails with its last actions.
    let limit = Instant::now() + budget + Duration::from_secs(60);
    let (mut beat, mut since) = (u64::MAX, Instant::now());
    let outcome = loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(r) => break Some(r),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = shared.beat.load(Ordering::Relaxed);
        if now != beat {
            (beat, since) = (now, Instant::now());
        }
        if since.elapsed() > STALL || Instant::now() > limit {
            break None;
        }
    };
    match outcome {
        Some(Ok(totals)) => eprintln!("api_sequence: seed {seed}: {totals:#?}"),
        Some(Err(p)) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("api_sequence failed with seed {seed} (replay: IOCOMPLETE_API_SEQ_SEED={seed}): {msg}");
        }
        None => {
            panic!(
                "api_sequence hung: no progress for {:?} (seed {seed}, replay: \
                 IOCOMPLETE_API_SEQ_SEED={seed}); {}",
                since.elapsed(),
                shared.last_actions()
            )
        }
    }
}

/// Run episodes until `target` operations. `IOCOMPLETE_API_SEQ_EPISODE=<seed>` (hex or
/// decimal, as printed in a failure) runs that one episode alone, to replay a failure
/// faster (`IOCOMPLETE_API_SEQ_EPISODE_OPS=<n>` shortens it).
fn run(seed: u64, target: u64, budget: Duration, shared: Arc<Shared>) -> Totals {
    let start = Instant::now();
    let mut w = World::new();
    let mut rng = Rng::new(seed);
    let mut episode = 0u64;
    let only = std::env::var("IOCOMPLETE_API_SEQ_EPISODE").ok().map(|v| {
        let v = v.trim();
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).unwrap(),
            None => v.parse().unwrap(),
        }
    });
    while w.totals.ops < target {
        assert!(
            start.elapsed() < budget,
            "only {} of {target} ops in the time budget of {budget:?} ({episode} episodes)",
            w.totals.ops
        );
        let mut es = rng.next();
        let mut ops = 500 + rng.below(4000);
        if let Some(e) = only {
            es = e;
            ops = env_u64("IOCOMPLETE_API_SEQ_EPISODE_OPS").unwrap_or(ops);
        }
        let sh = shared.clone();
        let r = catch_unwind(AssertUnwindSafe(|| run_episode(&mut w, es, ops, sh)));
        if let Err(p) = r {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("episode {episode} (episode seed {es:#x}, replay it alone: IOCOMPLETE_API_SEQ_EPISODE={es:#x}): {msg}");
        }
        episode += 1;
        if only.is_some() {
            break;
        }
    }
    w.check_pools("the end");
    assert_eq!(
        w.totals.outcomes.values().sum::<u64>(),
        w.totals.delivered.iter().sum::<u64>()
    );
    for r in ALL_ROUTES {
        if r != Route::Detach {
            assert_eq!(
                w.totals.submitted[r as usize], w.totals.delivered[r as usize],
                "route {r:?}: submitted vs delivered exactly once"
            );
        }
    }
    eprintln!("api_sequence: {:?} elapsed", start.elapsed());
    w.totals
}
