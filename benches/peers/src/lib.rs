//! What every engine of the peers bench shares: the workloads, the offsets (one seeded
//! PRNG), the data pattern and its check, aligned buffers, and the meter (warm-up, then a
//! fixed measured window; completed I/Os and the process's CPU time from `getrusage`).
//!
//! Every engine binary is run as `ENGINE WORKLOAD PATH` (environment: `SECS`, default 5;
//! `WARM`, default 1) and prints one CSV line `workload,engine,iops,cpu_us_per_io` to
//! stdout, details to stderr.

use std::alloc::Layout;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The data pattern's block: every 4 KiB block of the data file carries its own offset.
pub const BLOCK: usize = 4096;

/// One of the three workloads; the same for every engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// 4 KiB random read, QD 32, page-cached regular file.
    Cached,
    /// 4 KiB random read, QD 32, O_DIRECT (the loop device over tmpfs).
    Direct,
    /// 1 MiB sequential read, QD 4, O_DIRECT (the loop device over tmpfs).
    Seq,
}

impl Workload {
    /// Parse `cached`, `direct` or `seq`.
    pub fn parse(s: &str) -> Option<Workload> {
        Some(match s {
            "cached" => Workload::Cached,
            "direct" => Workload::Direct,
            "seq" => Workload::Seq,
            _ => return None,
        })
    }
    /// Its name in the CSV.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Cached => "cached",
            Workload::Direct => "direct",
            Workload::Seq => "seq",
        }
    }
    /// Bytes per I/O.
    pub fn bs(self) -> usize {
        match self {
            Workload::Seq => 1 << 20,
            _ => BLOCK,
        }
    }
    /// I/Os kept in flight.
    pub fn qd(self) -> usize {
        match self {
            Workload::Seq => 4,
            _ => 32,
        }
    }
    /// Whether the target is opened with O_DIRECT.
    pub fn direct(self) -> bool {
        self != Workload::Cached
    }
    /// Random (else sequential) offsets.
    pub fn random(self) -> bool {
        self != Workload::Seq
    }
}

/// A run: workload, target, window.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The engine's name (for the CSV).
    pub engine: &'static str,
    /// The workload.
    pub workload: Workload,
    /// Regular file or block device.
    pub path: PathBuf,
    /// Number of `bs` blocks in the target.
    pub blocks: u64,
    /// Warm-up before the measured window.
    pub warm: Duration,
    /// The measured window.
    pub secs: Duration,
}

fn env_secs(name: &str, default: f64) -> Duration {
    let v = std::env::var(name)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(default);
    Duration::from_secs_f64(v.max(0.0))
}

/// Parse `WORKLOAD PATH` from the command line (exits 2 on a bad one).
pub fn spec(engine: &'static str) -> Spec {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: {engine} cached|direct|seq PATH   (env SECS=5 WARM=1)");
        std::process::exit(2)
    };
    if args.len() != 2 {
        usage()
    }
    let workload = Workload::parse(&args[0]).unwrap_or_else(|| usage());
    let path = PathBuf::from(&args[1]);
    let size =
        target_size(&path).unwrap_or_else(|e| fail(engine, &format!("{}: {e}", path.display())));
    let blocks = size / workload.bs() as u64;
    if blocks < workload.qd() as u64 {
        fail(
            engine,
            &format!("{}: too small ({size} bytes)", path.display()),
        );
    }
    Spec {
        engine,
        workload,
        path,
        blocks,
        warm: env_secs("WARM", 1.0),
        secs: env_secs("SECS", 5.0),
    }
}

/// Size of a regular file or block device.
pub fn target_size(path: &std::path::Path) -> std::io::Result<u64> {
    use std::io::Seek;
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::End(0))
}

/// Print an error and exit 1.
pub fn fail(engine: &str, msg: &str) -> ! {
    eprintln!("{engine}: {msg}");
    std::process::exit(1)
}

impl Spec {
    /// Open the target with the workload's flags (read-only; O_DIRECT when asked).
    pub fn open_std(&self) -> std::fs::File {
        let mut o = std::fs::OpenOptions::new();
        o.read(true);
        if self.workload.direct() {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(&self.path)
            .unwrap_or_else(|e| fail(self.engine, &format!("{}: {e}", self.path.display())))
    }
    /// The offsets of in-flight slot `i` (0..qd).
    pub fn offsets(&self, i: usize) -> Offsets {
        Offsets::new(self, i)
    }
    /// I/Os in flight.
    pub fn qd(&self) -> usize {
        self.workload.qd()
    }
    /// Bytes per I/O.
    pub fn bs(&self) -> usize {
        self.workload.bs()
    }
}

/// The seed of every run (and every engine).
pub const SEED: u64 = 0x1005_eed5_0f11_2026;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The offsets one in-flight slot reads, the same sequence in every engine: random
/// (xorshift64*, seeded from [`SEED`] and the slot) or sequential (slot `i` reads blocks
/// `i, i + qd, i + 2 qd, ...`, wrapping: all slots together read the target in order).
#[derive(Debug, Clone)]
pub struct Offsets {
    state: u64,
    next: u64,
    stride: u64,
    blocks: u64,
    bs: u64,
    random: bool,
}

impl Offsets {
    fn new(s: &Spec, i: usize) -> Offsets {
        Offsets {
            state: splitmix(SEED ^ (i as u64).wrapping_mul(0x1000_0001)) | 1,
            next: i as u64 % s.blocks,
            stride: s.qd() as u64,
            blocks: s.blocks,
            bs: s.bs() as u64,
            random: s.workload.random(),
        }
    }
    /// The next offset (a multiple of the block size).
    #[inline]
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let block = if self.random {
            let mut x = self.state;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.state = x;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ((r as u128 * self.blocks as u128) >> 64) as u64
        } else {
            let b = self.next;
            self.next = (b + self.stride) % self.blocks;
            b
        };
        block * self.bs
    }
}

/// The pattern of the 4 KiB block at `off`: its first 8 bytes are `off` (little endian),
/// its last 8 bytes `!off`, the rest a byte derived from it.
pub fn fill_block(block: &mut [u8], off: u64) {
    block.fill(((off >> 12) as u8) ^ 0x5a);
    block[..8].copy_from_slice(&off.to_le_bytes());
    block[BLOCK - 8..].copy_from_slice(&(!off).to_le_bytes());
}

/// Check a completed read of `len` bytes at `off` (the first and last 4 KiB blocks of the
/// read: their offset stamps); exits the process on a mismatch, so nobody can skip reads.
#[inline]
pub fn verify(engine: &str, data: &[u8], off: u64, want: usize) {
    if data.len() != want {
        fail(
            engine,
            &format!("short read at {off}: {} of {want} bytes", data.len()),
        );
    }
    let last = want - BLOCK;
    for b in [0, last] {
        let o = off + b as u64;
        let head = u64::from_le_bytes(data[b..b + 8].try_into().unwrap());
        let tail = u64::from_le_bytes(data[b + BLOCK - 8..b + BLOCK].try_into().unwrap());
        if head != o || tail != !o {
            fail(
                engine,
                &format!("bad data at {o}: stamped {head:#x} / {:#x}", !tail),
            );
        }
    }
}

/// Write the data file: `size` bytes of the pattern.
pub fn make_data(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let chunk = 1 << 20;
    let mut buf = vec![0u8; chunk];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(chunk as u64) as usize;
        for (k, b) in buf[..n].chunks_mut(BLOCK).enumerate() {
            fill_block(b, off + (k * BLOCK) as u64);
        }
        f.write_all(&buf[..n])?;
        off += n as u64;
    }
    f.sync_all()
}

/// A heap buffer aligned to 4 KiB (O_DIRECT-ready), `Send`; engines wrap it in a newtype
/// to implement their runtime's buffer traits.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: *mut u8,
    cap: usize,
    /// Bytes filled (set by the engine after a read).
    pub len: usize,
}

// SAFETY: the buffer owns its allocation exclusively; moving it between threads moves
// that ownership.
unsafe impl Send for AlignedBuf {}
// SAFETY: `&AlignedBuf` only reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `cap` bytes (a multiple of 4 KiB).
    pub fn new(cap: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(cap, BLOCK).unwrap();
        // SAFETY: `cap` is non-zero (a workload's block size).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        AlignedBuf { ptr, cap, len: 0 }
    }
    /// Its capacity.
    pub fn cap(&self) -> usize {
        self.cap
    }
    /// Start of the buffer.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// The filled bytes.
    pub fn data(&self) -> &[u8] {
        // SAFETY: `len <= cap` bytes, all initialised (zeroed at allocation).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len.min(self.cap)) }
    }
    /// The whole capacity, writable.
    pub fn all_mut(&mut self) -> &mut [u8] {
        // SAFETY: `cap` bytes owned by us, initialised.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.cap) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, Layout::from_size_align(self.cap, BLOCK).unwrap()) }
    }
}

/// CPU time of the whole process (every thread, io_uring workers included), user + system.
pub fn cpu_time() -> Duration {
    // SAFETY: plain old data; zero is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF and a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[derive(Debug, Clone, Copy)]
struct Snap {
    ops: u64,
    cpu: Duration,
    at: Instant,
}

const WARM: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Worker `i`'s loop: `read(state, off)` reads (and checks) `bs` bytes at each of the
/// worker's offsets in turn, threading `state` (the buffer an owned-buffer API takes and
/// gives back), until the meter ends the run.
pub async fn read_loop<S, F, Fut>(spec: &Spec, meter: &Meter, i: usize, mut state: S, mut read: F)
where
    F: FnMut(S, u64) -> Fut,
    Fut: std::future::Future<Output = S>,
{
    let mut offs = spec.offsets(i);
    loop {
        state = read(state, offs.next()).await;
        if meter.done() {
            break;
        }
    }
}

/// Counts completed I/Os; after the warm-up it snapshots (count, CPU time, clock), after
/// the window again, then tells every worker to stop. The clock is read once per 32
/// completions. Shared by all workers (atomics; uncontended in single-threaded engines).
#[derive(Debug)]
pub struct Meter {
    ops: AtomicU64,
    phase: AtomicU8,
    warm_end: Instant,
    secs: Duration,
    snaps: Mutex<(Option<Snap>, Option<Snap>)>,
}

impl Meter {
    /// Starts the warm-up now.
    pub fn new(spec: &Spec) -> Meter {
        Meter {
            ops: AtomicU64::new(0),
            phase: AtomicU8::new(WARM),
            warm_end: Instant::now() + spec.warm,
            secs: spec.secs,
            snaps: Mutex::new((None, None)),
        }
    }

    /// Count one completed I/O; true once the window is over (the worker stops).
    #[inline]
    pub fn done(&self) -> bool {
        let n = self.ops.fetch_add(1, Relaxed) + 1;
        if n.is_multiple_of(32) {
            self.tick(n);
        }
        self.phase.load(Relaxed) == STOP
    }

    #[cold]
    fn tick(&self, n: u64) {
        let now = Instant::now();
        match self.phase.load(Relaxed) {
            WARM if now < self.warm_end => return,
            STOP => return,
            _ => {}
        }
        let mut s = self.snaps.lock().unwrap();
        let snap = || Snap {
            ops: n,
            cpu: cpu_time(),
            at: Instant::now(),
        };
        match (s.0, s.1) {
            (None, _) => {
                s.0 = Some(snap());
                self.phase.store(MEASURE, Relaxed);
            }
            (Some(a), None) if now >= a.at + self.secs => {
                s.1 = Some(snap());
                self.phase.store(STOP, Relaxed);
            }
            _ => {}
        }
    }

    /// Print the CSV line (stdout) and a summary (stderr); exits 1 if the window never
    /// ended (a worker failed).
    pub fn report(&self, spec: &Spec, note: &str) {
        let s = self.snaps.lock().unwrap();
        let (Some(a), Some(b)) = (s.0, s.1) else {
            fail(spec.engine, "the measured window never ended");
        };
        let ops = b.ops - a.ops;
        let wall = (b.at - a.at).as_secs_f64();
        let cpu = (b.cpu - a.cpu).as_secs_f64();
        let iops = ops as f64 / wall;
        let cpu_us = cpu * 1e6 / ops.max(1) as f64;
        println!(
            "{},{},{:.0},{:.3}",
            spec.workload.name(),
            spec.engine,
            iops,
            cpu_us
        );
        eprintln!(
            "{} {}: {:.0} IOPS ({:.1} MiB/s), {:.3} us CPU/IO, {} I/Os in {:.2} s, cpu {:.0}%{}{}",
            spec.engine,
            spec.workload.name(),
            iops,
            iops * spec.bs() as f64 / (1 << 20) as f64,
            cpu_us,
            ops,
            wall,
            cpu / wall * 100.0,
            if note.is_empty() { "" } else { "; " },
            note
        );
    }
}
