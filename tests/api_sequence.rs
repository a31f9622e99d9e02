//! A randomized API-sequence harness: random sequences of submissions (nop, read, readv,
//! write, writev, timeout, poll; valid and invalid) by every completion route, cancels,
//! deadlines, dropped tickets and futures, rings dropped mid-flight, full completion queues
//! drained late, RingHandle submissions from other threads, SQPOLL rings, multishot
//! readers sharing a pool, and continuous readers, split and DMA drivers and FIFO
//! receivers started and dropped — over a real file, a scratch file and pipes.
//!
//! The oracle:
//! * every operation is delivered exactly once, by the route it was submitted with
//!   (counted per route), or — when its ticket/future was dropped, it was detached, or its
//!   ring was dropped with it in the ring's own FIFO — never;
//! * every byte read matches the file (kept in memory: verify blocks), every record read
//!   from a pipe was written and is read at most once, and cancelled reads lose none;
//! * every write landed where it should (the scratch file is compared with a model);
//! * each ring completes every operation it accepted (`submitted == completed`, no stale
//!   CQE), and every pool slot is back at the end of every episode.
//!
//! Seeded: `IOCOMPLETE_API_SEQ_SEED=<n>` replays a run (the seed is printed at the start
//! and in every failure). `IOCOMPLETE_API_SEQ_OPS=<n>` sets the number of operations
//! (default 100 000), `IOCOMPLETE_API_SEQ_SECS=<n>` the time budget (default 150 s; a run
//! that cannot finish in it fails — a hang or a crawl is a finding too).
//!
//! Inputs that hit known, separately tested bugs are left out of the random mix (offsets
//! past i64::MAX, overflowing parts, huge durations, full queues at a ring's drop, tiny
//! SQPOLL rings): see tests/boundaries.rs.

mod common;

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

use common::verify;
use iocomplete::dma::{Config as DmaConfig, Direction, SgList};
use iocomplete::ring::BufPart;
use iocomplete::split::{ChunkHandler, Job, Mode, SplitConfig};
use iocomplete::{
    BufferPool, Bufs, Completion, CompletionQueue, ContinuousReader, DmaDriver, Error, ErrorKind,
    FifoReceiver, FifoStatus, IoBuf, Op, OpFuture, OpId, PoolBuf, ReaderReport, Restart, Ring,
    RingHandle, SplitDriver, StreamReads, Target, Ticket,
};

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

// ---- PRNG and configuration -------------------------------------------------------------

/// splitmix64: small, fast, good enough to drive choices.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
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
    verify_path: std::path::PathBuf,
    scratch_path: std::path::PathBuf,
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
    drivers: u64,
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
        let dir = common::disk_dir();
        let verify_path = dir.path().join("verify");
        verify::make_file(&verify_path, FILE_SIZE, BS, FILE_SEED);
        let file = Arc::new(std::fs::read(&verify_path).unwrap());
        let scratch_path = dir.path().join("scratch");
        let model: Vec<u8> = (0..SCRATCH_BLOCKS * BS).map(|i| (i % 251) as u8).collect();
        std::fs::write(&scratch_path, &model).unwrap();
        let mk = |slots, len, header| {
            BufferPool::builder()
                .slots(slots)
                .slot_len(len)
                .header_len(header)
                .build()
                .unwrap()
        };
        World {
            _dir: dir,
            verify_path,
            scratch_path,
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

    fn check_scratch(&self, when: &str) {
        let mut now = vec![0u8; SCRATCH_BLOCKS * BS];
        File::open(&self.scratch_path)
            .unwrap()
            .read_exact_at(&mut now, 0)
            .unwrap();
        for b in 0..SCRATCH_BLOCKS {
            if self.unknown[b] {
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
    Timeout,
    Poll,
    /// Refused before the kernel with an error satisfying the predicate.
    Invalid(&'static str, fn(&ErrorKind) -> bool),
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
            Kind::Timeout => write!(f, "Timeout"),
            Kind::Poll => write!(f, "Poll"),
            Kind::Invalid(what, _) => write!(f, "Invalid({what})"),
        }
    }
}

/// An operation whose completion has not been seen.
#[derive(Debug)]
struct Pending {
    kind: Kind,
    route: Route,
    id: Option<OpId>,
    cancelled: bool,
    deadline: bool,
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
        (HKind::Invalid, Err(e)) if matches!(e.kind(), ErrorKind::InvalidInput { .. }) => {}
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
        d: Box<DmaDriver<fn(&iocomplete::dma::TransferReport)>>,
        extents: Vec<(u64, u64)>,
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
    fn stop(&self);
    fn is_multishot(&self) -> bool;
}

impl<C, R, F> Drive for ContinuousReader<C, R, F>
where
    C: Send + Sync + 'static,
    R: Fn(&C, PoolBuf, u64) + Send + Sync + 'static,
    F: FnMut(&C, &Error) -> Restart,
{
    fn drive(&mut self, ring: &mut Ring) -> iocomplete::Result<Option<ReaderReport>> {
        ContinuousReader::drive(self, ring, Some(Duration::ZERO))
    }
    fn debug(&self) -> String {
        format!("{self:?}")
    }
    fn stop(&self) {
        ContinuousReader::stop(self)
    }
    fn is_multishot(&self) -> bool {
        ContinuousReader::is_multishot(self)
    }
}

/// Checks every chunk a split read hands out against the file.
struct ChunkCheck {
    file: Arc<Vec<u8>>,
    bytes: u64,
}

impl ChunkHandler for ChunkCheck {
    fn on_read(&mut self, offset: u64, buf: &PoolBuf) -> iocomplete::Result<()> {
        let o = offset as usize;
        assert!(
            buf.data() == &self.file[o..o + buf.len()],
            "split chunk at {offset} differs from the file"
        );
        self.bytes += buf.len() as u64;
        Ok(())
    }
}

struct Episode<'w> {
    w: &'w mut World,
    rng: Rng,
    log: VecDeque<String>,
    ring: Option<Ring>,
    file_t: Target,
    scratch_t: Target,
    /// A target closed right after registration (stale).
    stale_t: Target,
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

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn write_all_fd(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: valid buffer and descriptor.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        assert!(
            n > 0,
            "write to fd {fd}: {}",
            std::io::Error::last_os_error()
        );
        bytes = &bytes[n as usize..];
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: F_GETFL/F_SETFL on a descriptor this test owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        assert!(fl >= 0);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK), 0);
    }
}

/// A deterministic byte stream for the stream readers and FIFO receivers.
fn stream_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed);
    (0..len).map(|_| r.next() as u8).collect()
}

fn noop_poll(f: &mut OpFuture) -> Option<Completion> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(f).poll(&mut cx) {
        Poll::Ready(c) => Some(c),
        Poll::Pending => None,
    }
}

impl<'w> Episode<'w> {
    fn new(w: &'w mut World, seed: u64, ops: u64) -> Episode<'w> {
        let mut rng = Rng(seed);
        let sqpoll = rng.chance(8);
        let mut b = Ring::builder();
        match rng.below(4) {
            0 => b = b.entries(4).cq_entries(8),
            1 => b = b.entries(16).cq_entries(16),
            2 => b = b.entries(64),
            _ => {}
        }
        if sqpoll {
            // A roomy SQ: small SQPOLL rings fail with EBUSY (finding 6, tested elsewhere).
            b = Ring::builder().entries(256).sqpoll(5);
        }
        let mut ring = b.build().unwrap();
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
        let (rx, tx) = pipe();
        let pipe_rx_dup = rx.try_clone().unwrap();
        let pipe_r = ring.register(rx).unwrap();
        let nq = 1 + rng.below(3) as usize;
        let queues = (0..nq)
            .map(|_| {
                let cap = [1, 2, 5, 16, 256][rng.below(5) as usize];
                Arc::new(CompletionQueue::new(cap))
            })
            .collect();
        Episode {
            w,
            rng,
            log: VecDeque::new(),
            ring: Some(ring),
            file_t,
            scratch_t,
            stale_t,
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
            sink: Arc::new(Mutex::new(Vec::new())),
            busy: vec![false; SCRATCH_BLOCKS],
            handle_q: Arc::new(CompletionQueue::new(8192)),
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
        if self.log.len() == 40 {
            self.log.pop_front();
        }
        self.log.push_back(s);
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
        write_all_fd(self.pipe_tx.as_raw_fd(), &bytes);
    }

    // ---- building operations ----

    /// A random operation: its kind (expectation) and the op itself; `None` when no buffer
    /// is free or the choice does not fit right now.
    fn make_op(&mut self, route: Route) -> Option<(Kind, Op)> {
        let k = self.rng.weighted(&[35, 30, 5, 8, 6, 2, 3, 2, 9]);
        let cap_of = |b: &PoolBuf| b.capacity();
        Some(match k {
            0 => (Kind::Nop, Op::nop()),
            1 => {
                let mut b = self.buf()?;
                let off = self.rng.below(FILE_SIZE + 100);
                let small = self.rng.chance(85);
                let len = if small {
                    1 + self.rng.below(512) as usize
                } else {
                    1 + self.rng.below(cap_of(&b) as u64) as usize
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
                let off = self.rng.below(FILE_SIZE);
                let mut bufs = Vec::new();
                for _ in 0..n {
                    match self.buf() {
                        Some(b) => bufs.push(b),
                        None => return None,
                    }
                }
                if self.rng.chance(50) {
                    let mut lens = Vec::new();
                    for b in &mut bufs {
                        let l = 1 + self.rng.below(700) as usize;
                        b.set_len(l).unwrap();
                        lens.push(l);
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
                    let lens = parts.iter().map(|p| p.len).collect();
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
                (Kind::PipeRead, Op::read_len(t, 0, b, REC))
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
                    let n = 1 + self.rng.below(max.min(1500)) as usize;
                    let mut b = self.buf()?;
                    fill(&mut b, n, 0);
                    let bytes = b.data().to_vec();
                    self.busy[blk] = true;
                    let t = self.scratch_t;
                    let op = if self.rng.chance(30) {
                        Op::write(t, off, b.share())
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
            _ => self.make_invalid()?,
        })
    }

    /// An operation refused before the kernel (inputs of known bugs left out).
    fn make_invalid(&mut self) -> Option<(Kind, Op)> {
        let inv = |k: &ErrorKind| matches!(k, ErrorKind::InvalidInput { .. });
        let small = |k: &ErrorKind| matches!(k, ErrorKind::BufferTooSmall { .. });
        let stale = |k: &ErrorKind| matches!(k, ErrorKind::StaleTarget);
        let t = self.file_t;
        let which = self.rng.below(9);
        Some(match which {
            0 => {
                let b = self.buf()?;
                (Kind::Invalid("read_len 0", inv), Op::read_len(t, 0, b, 0))
            }
            1 => {
                let b = self.buf()?;
                let cap = b.capacity();
                (
                    Kind::Invalid("read_len > cap", small),
                    Op::read_len(t, 0, b, cap + 1),
                )
            }
            2 => {
                let b = self.buf()?;
                (
                    Kind::Invalid("stale target", stale),
                    Op::read(self.stale_t, 0, b),
                )
            }
            3 => {
                let mut b = self.buf()?;
                b.set_len(4).unwrap();
                (
                    Kind::Invalid("write to a read-only file", inv),
                    Op::write(t, 0, b),
                )
            }
            4 => {
                let b = self.buf()?;
                (
                    Kind::Invalid("write of 0 bytes", inv),
                    Op::write(self.scratch_t, 0, b),
                )
            }
            5 => (
                Kind::Invalid("readv of nothing", inv),
                Op::readv(t, 0, Vec::new()),
            ),
            6 => {
                let b = self.buf()?;
                let cap = b.capacity();
                let p = vec![BufPart { start: cap, len: 1 }];
                (
                    Kind::Invalid("part past capacity", inv),
                    Op::readv_parts(t, 0, vec![b], p),
                )
            }
            7 => (
                Kind::Invalid("timeout with a deadline", inv),
                Op::timeout(Duration::ZERO).deadline(Duration::ZERO),
            ),
            _ => {
                let mut b = self.buf()?;
                b.set_len(4).unwrap();
                (
                    Kind::Invalid("nowait write", inv),
                    Op::write(self.scratch_t, 0, b).nowait(),
                )
            }
        })
    }

    fn submit_random(&mut self) {
        let route = ALL_ROUTES[self.rng.weighted(&[10, 15, 15, 20, 20, 10, 10])];
        let Some((kind, mut op)) = self.make_op(route) else {
            return;
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        op = op.tag(tag);
        let mut deadline = false;
        let deadline_ok = !matches!(kind, Kind::Timeout | Kind::Invalid(..));
        if deadline_ok && self.rng.chance(10) {
            deadline = true;
            let d = if self.rng.chance(50) {
                Duration::from_micros(self.rng.below(3000))
            } else {
                Duration::from_secs(10)
            };
            op = op.deadline(d);
        }
        self.note(format!(
            "submit #{tag} {kind:?} via {route:?} deadline={deadline}"
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
        let q = self.queues[self.rng.below(self.queues.len() as u64) as usize].clone();
        let sink = self.sink.clone();
        let ring = self.ring.as_mut().unwrap();
        let sub = ring.submit(op);
        let id = match route {
            Route::Wait => {
                let c = sub.wait().unwrap();
                self.pending.insert(
                    tag,
                    Pending {
                        kind,
                        route,
                        id: None,
                        cancelled: false,
                        deadline,
                        abandoned: false,
                    },
                );
                self.deliver(c, Route::Wait);
                return;
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
            cancelled: false,
            deadline,
            abandoned,
        };
        // A detached write lands unless its deadline or a cancel stops it (or the ring
        // drops mid-flight): then what it did is unknowable.
        if abandoned {
            if let Kind::ScratchWrite { off, bytes } = &p.kind {
                let (off, bytes) = (*off, bytes.clone());
                if deadline {
                    self.w.unknown[off as usize / BS] = true;
                } else {
                    self.apply_write(off, &bytes);
                }
            }
        }
        self.pending.insert(tag, p);
        if self.rng.chance(4) {
            self.cancel_tag(tag);
        }
    }

    fn apply_write(&mut self, off: u64, bytes: &[u8]) {
        let o = off as usize;
        self.w.history[o / BS].push(format!("applied {}..{}", o, o + bytes.len()));
        self.w.model[o..o + bytes.len()].copy_from_slice(bytes);
    }

    fn cancel_tag(&mut self, tag: u64) {
        let Some(id) = self.pending.get(&tag).and_then(|p| p.id) else {
            return;
        };
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
                    p.deadline || matches!(p.kind, Kind::Timeout),
                    "#{tag} {:?}: TimedOut without a deadline",
                    p.kind
                );
            }
        }
        let interrupted = r.is_err_and(|e| e.is_cancelled() || e.is_timed_out());
        match &p.kind {
            Kind::Nop => assert!(r == Ok(0) || interrupted, "#{tag} nop: {r:?}"),
            Kind::Timeout => assert!(interrupted, "#{tag} timeout: {r:?}"),
            Kind::Poll => match r {
                Ok(m) => assert!(m & libc::POLLIN as usize != 0, "#{tag} poll mask {m:#x}"),
                _ => assert!(interrupted, "#{tag} poll: {r:?}"),
            },
            Kind::Invalid(what, pred) => match r {
                Err(e) if pred(&e.kind()) => {}
                // A cancel can not win against a refusal: it completes at submission.
                _ => panic!("#{tag} invalid ({what}): {r:?}"),
            },
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
        let Some(p) = self.pending.get_mut(&tag) else {
            return;
        };
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
            let mut rng = Rng(self.rng.next());
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
            // A multishot reader dropped mid-flight keeps its provided-buffer ring, and so
            // every slot of its pool, until the ring drops (NEW-G, tests/boundaries.rs):
            // stop it instead.
            if let Driver::Reader {
                reader, stopped, ..
            } = &mut self.drivers[i]
            {
                if reader.is_multishot() {
                    reader.stop();
                    *stopped = true;
                    self.note("stop a multishot reader".into());
                    return;
                }
            }
            let d = self.drivers.swap_remove(i);
            self.note("drop a driver mid-flight".into());
            drop_driver(d);
            return;
        }
        if self.step_driver(i) {
            let d = self.drivers.swap_remove(i);
            self.finish_driver(d);
        }
    }

    fn start_driver(&mut self) {
        let kind = self.rng.below(5);
        self.note(format!("start driver kind {kind}"));
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
        let on_failed = move |_: &RCtx, e: &Error| {
            f2.lock().unwrap().push(*e);
            Restart::No
        };
        let on_read = |c: &RCtx, b: PoolBuf, off: u64| {
            let o = off as usize;
            assert!(
                o + b.len() <= c.data.len() && b.data() == &c.data[o..o + b.len()],
                "reader delivered {} bytes at {off} that are not the source's",
                b.len()
            );
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
            let data = Arc::new(stream_bytes(self.rng.next(), len));
            let reads = if self.rng.chance(70) {
                StreamReads::Auto
            } else {
                StreamReads::SingleShot
            };
            let ctx = RCtx {
                data: data.clone(),
                got: got.clone(),
                positional: false,
            };
            let reader = ContinuousReader::builder(r, &pool)
                .stream_reads(reads)
                .build(self.ring(), ctx, on_read, on_failed);
            let reader = match reader {
                Ok(r) => r,
                Err(e) => {
                    assert!(
                        matches!(e.kind(), ErrorKind::PoolExhausted),
                        "stream reader: {e:?}"
                    );
                    return None;
                }
            };
            let mut wr = Rng(self.rng.next());
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
            };
            let pending = 1 + self.rng.below(4) as u32;
            let mut b = ContinuousReader::builder(self.file_t, &pool)
                .pending_reads(pending)
                .range(start, end)
                .transfer_len(1 + self.rng.below(BS as u64) as u32);
            if self.rng.chance(40) {
                b = b.ordered(true);
            }
            let reader = b.build(self.ring(), ctx, on_read, on_failed).unwrap();
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
        let cfg = if self.rng.chance(50) {
            SplitConfig::new()
                .mode(Mode::Serial)
                .max_chunk(1 + self.rng.below(3 * BS as u64))
        } else {
            SplitConfig::new().mode(Mode::Parallel {
                max_in_flight: 1 + self.rng.below(4) as u32,
            })
        };
        let pool = self.w.pools[1].clone();
        let job = Job::Read {
            src: self.file_t,
            offset: off,
            len,
        };
        match SplitDriver::new(self.ring(), &pool, job, cfg) {
            Ok(d) => Some(Driver::Split {
                d,
                off,
                len,
                h: ChunkCheck {
                    file: self.w.file.clone(),
                    bytes: 0,
                },
            }),
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
        let report: fn(&iocomplete::dma::TransferReport) = |_| {};
        let t = self.file_t;
        let d = DmaDriver::new(self.ring(), t, sg, Direction::Read, cfg, None, report)
            .map_err(|r| r.error())
            .unwrap();
        Some(Driver::Dma {
            d: Box::new(d),
            extents,
        })
    }

    fn start_fifo(&mut self) -> Option<Driver> {
        let (rx, tx) = pipe();
        set_nonblocking(rx.as_raw_fd());
        let r = self.ring().register(rx).unwrap();
        let mut f = FifoReceiver::new(self.ring.as_ref().unwrap(), r).unwrap();
        let b = self.w.pools[0].try_get().ok()?;
        let len = 1 + self.rng.below(b.capacity() as u64) as usize;
        let stream = stream_bytes(self.rng.next(), len);
        f.receive(self.ring(), b, len).map_err(|r| r.error).unwrap();
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
            Driver::Reader { reader, .. } => reader.drive(ring).unwrap().is_some(),
            Driver::Split { d, h, .. } => {
                d.process(ring, h);
                d.is_complete()
            }
            Driver::Dma { d, .. } => {
                d.process(ring);
                d.outcome().is_some()
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
                    write_all_fd(tx.as_raw_fd(), &stream[*sent..*sent + n]);
                    *sent += n;
                }
                if self.rng.chance(3) {
                    f.cancel(ring);
                }
                match f.poll(ring).unwrap() {
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
                    assert_eq!(got, expect, "reader delivered the wrong byte count");
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
                assert_eq!(h.bytes, want, "split: chunk bytes");
            }
            Driver::Dma { mut d, extents } => {
                let c = d.outcome().expect("complete");
                let sg = d.take_sg().expect("buffers back after the final transfer");
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
    handle: std::thread::JoinHandle<()>,
    quit: Arc<AtomicBool>,
}

impl Writer {
    fn finish(self) {
        self.quit.store(true, Ordering::Relaxed);
        if let Err(p) = self.handle.join() {
            resume_unwind(p);
        }
    }
}

/// The context of a continuous reader in the harness.
struct RCtx {
    data: Arc<Vec<u8>>,
    got: Arc<AtomicU64>,
    positional: bool,
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
        Driver::Dma { d, extents } => format!("dma {extents:?}: {d:?}"),
        Driver::Fifo { f, len, sent, .. } => format!("fifo {sent}/{len} sent: {f:?}"),
    }
}

fn drop_driver(d: Driver) {
    match d {
        Driver::Reader { reader, writer, .. } => {
            drop(reader);
            if let Some(w) = writer {
                w.finish();
            }
        }
        other => drop(other),
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
        self.note("end".into());
        self.join_handle_threads();
        // Enough records for every read that may still wait on the pipe, plus one for the
        // polls.
        let unseen_pipe = self
            .pending
            .values()
            .filter(|p| matches!(p.kind, Kind::PipeRead))
            .count() as u64;
        self.feed_pipe(unseen_pipe + 1);
        let end = Instant::now() + Duration::from_secs(30);
        let (mut idle_rounds, mut last_progress) = (0, 0);
        loop {
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
                        write_all_fd(tx.as_raw_fd(), &stream[*sent..]);
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
                let ring = self.ring.as_ref().unwrap();
                let live: Vec<_> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| !p.abandoned)
                    .take(10)
                    .collect();
                let drivers: Vec<String> = self.drivers.iter().map(describe).collect();
                panic!(
                    "episode end: not idle after 30 s: {} ops pending ({live:?}), ring in_flight {} \
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
        drop(self.ring.take());
        self.finish_checks("normal end");
    }

    /// Drop the ring with operations in flight, while handle threads may still submit.
    /// Returns false (and does nothing) when a queue could overflow at the drop (finding
    /// 3 would lose completions; tested in boundaries.rs).
    fn drop_mid_flight(&mut self) -> bool {
        // Room in every queue for every completion still to come (see above).
        // The ring's backlog must be empty too: a ring dropped with completions in its
        // backlog loses them even when the queue has room (finding 3). A drive with empty
        // queues that leaves them empty proves the backlog is empty.
        let mut fits = false;
        for _ in 0..200 {
            self.drain_all();
            self.ring().poll().unwrap();
            let waiting = self
                .pending
                .values()
                .filter(|p| p.route == Route::Queue && !p.abandoned)
                .count();
            if self
                .queues
                .iter()
                .all(|q| q.is_empty() && waiting <= q.capacity())
            {
                fits = true;
                break;
            }
        }
        if !fits {
            return false;
        }
        self.note("drop the ring mid-flight".into());
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
        drop(self.ring.take());
        for d in std::mem::take(&mut self.drivers) {
            drop_driver(d);
        }
        self.join_handle_threads();
        self.drain_all();
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
        true
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
        self.w.check_scratch(when);
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

fn run_episode(w: &mut World, seed: u64, ops: u64) {
    let mut ep = Episode::new(w, seed, ops);
    if ep.sqpoll {
        ep.w.totals.sqpoll_episodes += 1;
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        if ep.rng.chance(30) {
            ep.start_handle_threads();
        }
        let drop_at = if ep.rng.chance(20) {
            Some(1 + ep.rng.below(ops - 1))
        } else {
            None
        };
        while ep.ops_left > 0 {
            if drop_at == Some(ep.ops_left) && ep.drop_mid_flight() {
                return None;
            }
            match ep.rng.weighted(&[60, 14, 12, 3, 1, 1, 5, 2]) {
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
                _ => ep.driver_action(),
            }
        }
        ep.end_normal();
        Some(())
    }));
    match result {
        Ok(_) => {}
        Err(p) => {
            let log: Vec<String> = ep.log.iter().cloned().collect();
            ep.handle_stop.store(true, Ordering::Relaxed);
            eprintln!(
                "last actions of the failing episode:\n  {}",
                log.join("\n  ")
            );
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
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("api-seq".into())
        .spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(|| run(seed, target, budget)));
            let _ = tx.send(r);
        })
        .unwrap();
    match rx.recv_timeout(budget + Duration::from_secs(60)) {
        Ok(Ok(totals)) => eprintln!("api_sequence: seed {seed}: {totals:#?}"),
        Ok(Err(p)) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("api_sequence failed with seed {seed} (replay: IOCOMPLETE_API_SEQ_SEED={seed}): {msg}");
        }
        Err(_) => panic!("api_sequence hung (seed {seed}, replay: IOCOMPLETE_API_SEQ_SEED={seed})"),
    }
}

fn run(seed: u64, target: u64, budget: Duration) -> Totals {
    let start = Instant::now();
    let mut w = World::new();
    let mut rng = Rng(seed);
    let mut episode = 0u64;
    while w.totals.ops < target {
        assert!(
            start.elapsed() < budget,
            "only {} of {target} ops in the time budget of {budget:?} ({episode} episodes)",
            w.totals.ops
        );
        let es = rng.next();
        let ops = 500 + rng.below(4000);
        let r = catch_unwind(AssertUnwindSafe(|| run_episode(&mut w, es, ops)));
        if let Err(p) = r {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("episode {episode} (episode seed {es:#x}): {msg}");
        }
        episode += 1;
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
