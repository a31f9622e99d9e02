//! `iobench`: a fio-like load generator built on the crate's ring, registered buffer pool,
//! registered file and completion path.
//!
//! ```text
//! iobench --rw randread|read|randwrite|write --bs BYTES --qd N [--direct]
//!         [--seconds S | --ops N] [--size BYTES] [--threads N [--shared-pool] [--pin]] FILE
//! ```
//!
//! `iobench --help` lists the options and their defaults.
//!
//! After a warm-up of 500 operations, or twice `--qd` if more (which lets the ring's
//! lazily sized tables reach their steady size), keeps `N` operations in flight for `S` seconds (default 5), or
//! for exactly `--ops` operations (not counting the warm-up; `--ops` below `--qd` is
//! refused), and prints one JSON line to stdout:
//! `{"backend":…,"iops":…,"bw_bytes":…,"lat_p50_ns":…,"lat_p99_ns":…,"cpu_usr":…,
//! "cpu_sys":…,"ops":…,"bytes":…,"allocs":…,"threads":…,"per_thread":[{"iops":…,"ops":…,
//! "lat_p50_ns":…,"lat_p99_ns":…},…]}` (`backend`: `"uring"` or `"threads"`, what
//! [`Ring::backend`] ran, which `IOCOMPLETE_BACKEND=threads` forces; CPU from `getrusage`,
//! in percent of one core over the run; `allocs`: heap allocations during the run, 0 in
//! steady state) and a one-line summary to stderr. A run whose operations did not all complete, whose buffers did not all come
//! back, or whose histogram missed an operation fails instead of printing numbers. Random offsets are multiples of the block size. FILE is a regular file or a
//! block device (anything else is refused, checked before it is opened). A missing FILE
//! is created and filled to `--size` only when `--size` is given (otherwise it is an
//! error); a regular file is extended to `--size` for write jobs, and a `--size` larger
//! than an existing FILE is refused for read jobs (exit 2). The range benched is
//! `min(--size, size of FILE)`. Numbers take k/m/g (powers of 1024) suffixes. A `--size`
//! past the largest file offset (`i64::MAX`) is refused, and so is one whose fill would
//! need more than the filesystem's free space (`statvfs` `f_bavail`), before FILE is
//! created or grown. So are a `--direct` `--bs` that is not a multiple of FILE's
//! alignment (a missing FILE's is probed with an `O_TMPFILE` next to it) and a buffer pool
//! (`--qd` x `--bs`) that cannot be allocated.
//!
//! `--threads N` runs the job on N threads side by side (fio's `--numjobs`), each with a
//! ring, a pool and a descriptor of FILE of its own and its own sequence of random
//! offsets; they warm up, then start together. The top-level figures are the totals (IOPS
//! and bandwidth over the wall time of the slowest thread, latency percentiles of all
//! operations, CPU of the whole process); `per_thread` has each thread's own. `--ops` is
//! per thread. `--shared-pool` gives them one pool of N x `--qd` slots instead (each
//! thread's magazine in front of one shared free list), `--pin` pins thread i to the i-th
//! allowed CPU; the JSON says which (`"pool"`, `"pinned"`).
//!
//! The ring is built with `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN`
//! (falling back to a plain ring on kernels without them); `IOBENCH_RING=single` drops
//! DEFER_TASKRUN and `IOBENCH_RING=plain` both, for A/B comparisons. Each enter submits
//! every re-armed operation and waits for a quarter of the queue (at least one) to
//! complete.

mod engine;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use engine::{Engine, Job, Rw};
use iocomplete::{BackendKind, BufferPool, BufferRegistration, ErrorKind, Ring};

/// Operations run before the measured run.
const WARMUP_OPS: u64 = 500;

/// Heap allocations so far (the `allocs` of the JSON line).
static ALLOCS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting allocations (`realloc` and `alloc_zeroed` come through
/// `alloc` by their default definitions).
struct Counting;

// SAFETY: both methods forward to `System` with the caller's arguments unchanged; the count
// is one relaxed atomic add (a statistic: no other memory depends on it).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A fio-like load generator: keeps N operations in flight on FILE through a registered
/// buffer pool and prints one JSON line of results.
#[derive(Debug, Parser)]
#[command(name = "iobench")]
struct Args {
    /// Access pattern: randread, read, randwrite or write
    #[arg(long, value_name = "PATTERN", value_parser = rw)]
    rw: Rw,
    /// Block size in bytes, 1..=64M (K, M, G suffixes: powers of 1024)
    #[arg(long, value_name = "BYTES", value_parser = bs)]
    bs: usize,
    /// Operations in flight
    #[arg(long, value_name = "N", value_parser = qd)]
    qd: usize,
    /// O_DIRECT (the block size must be a multiple of the device's alignment)
    #[arg(long)]
    direct: bool,
    /// How long to run, in seconds (after a warm-up of 500 operations)
    #[arg(long, value_name = "S", default_value = "5", allow_hyphen_values = true,
          value_parser = seconds, conflicts_with = "ops")]
    seconds: Duration,
    /// Run exactly this many measured operations instead of --seconds (the 500 warm-up
    /// operations are extra, not counted); at least --qd; per thread with --threads
    #[arg(long, value_name = "N", value_parser = ops)]
    ops: Option<u64>,
    /// Threads, each with a ring, a buffer pool of --qd slots and a descriptor of FILE of
    /// its own, running the same job side by side (fio's --numjobs); 1..=256
    #[arg(long, value_name = "N", default_value = "1", value_parser = threads)]
    threads: usize,
    /// With --threads: one pool of --threads x --qd slots for every thread (each thread
    /// keeps a magazine of slots in front of the shared free list) instead of a pool per
    /// thread
    #[arg(long)]
    shared_pool: bool,
    /// Pin thread i to the i-th CPU this process may run on (modulo their number)
    #[arg(long)]
    pin: bool,
    /// Bytes to bench [default: the size of FILE]; a missing FILE is created and filled to
    /// it, a regular file grown to it for write patterns (for read patterns, no more than
    /// the size of an existing FILE)
    #[arg(long, value_name = "BYTES", value_parser = cli::bytes)]
    size: Option<u64>,
    /// A regular file or block device
    #[arg(value_name = "FILE", value_parser = cli::named)]
    file: PathBuf,
}

fn main() {
    // Exit status: 2 for a bad command line, 1 for a failure while running.
    let args = Args::parse();
    if let Some(s) = args.size.filter(|&s| s < args.bs as u64) {
        cli::usage_exit::<Args>(format!(
            "--size {s} is smaller than one --bs {} block",
            args.bs
        ));
    }
    if let Some(s) = args.size.filter(|&s| s > i64::MAX as u64) {
        cli::usage_exit::<Args>(format!(
            "--size {s} is past the largest file offset, {} (i64::MAX)",
            i64::MAX
        ));
    }
    if let Some(n) = args.ops.filter(|&n| n < args.qd as u64) {
        cli::usage_exit::<Args>(format!(
            "--ops {n} is below --qd {}: give at least as many operations as are kept in \
             flight, or a lower --qd",
            args.qd
        ));
    }
    // Everything that depends only on the arguments is checked before FILE is created,
    // filled or grown: bad input changes nothing.
    if args.direct {
        if let Some(align) = direct_align(&args.file).filter(|&al| args.bs % al as usize != 0) {
            cli::usage_exit::<Args>(format!(
                "misaligned direct I/O: --bs {} is not a multiple of {}'s {align}-byte alignment",
                args.bs,
                args.file.display()
            ));
        }
    }
    // The pools (one per thread) are the one allocation that depends only on the
    // arguments: built here, once, before FILE is touched, and handed to `run`. Each is
    // faulted in as it is built, so pools that together exceed the machine's memory are
    // refused first (one pool that large the kernel refuses by itself).
    let total = args.qd as u128 * args.bs as u128 * args.threads as u128;
    if let Some(mem) = memory().filter(|&m| args.threads > 1 && total > m) {
        cli::usage_exit::<Args>(format!(
            "buffer pools of --threads {} x --qd {} x --bs {} = {total} bytes: more than \
             this machine's memory and swap ({mem} bytes)",
            args.threads, args.qd, args.bs
        ));
    }
    let (count, slots) = if args.shared_pool {
        (1, args.qd * args.threads)
    } else {
        (args.threads, args.qd)
    };
    let pools = (0..count).map(|_| BufferPool::builder().slots(slots).slot_len(args.bs).build());
    let pools = match pools.collect::<Result<Vec<_>, _>>() {
        Ok(p) => p,
        Err(e) => cli::usage_exit::<Args>(format!(
            "buffer pool of --qd {} x --bs {} = {} bytes{}: {e}",
            args.qd,
            args.bs,
            args.qd as u128 * args.bs as u128,
            match (args.threads, args.shared_pool) {
                (1, _) => String::new(),
                (n, true) => format!(" x --threads {n} (one shared pool)"),
                (n, false) => format!(" (one per thread, --threads {n})"),
            }
        )),
    };
    if let Err(e) = run(&args, pools) {
        eprintln!("iobench: {e}");
        std::process::exit(1);
    }
}

#[path = "../common/cli.rs"]
mod cli;

/// The direct-I/O alignment FILE has (or, missing, a file created next to it would have:
/// probed with an anonymous `O_TMPFILE`, which leaves nothing behind). `None` when it
/// cannot be told; `run` checks again on the opened FILE.
fn direct_align(file: &Path) -> Option<u32> {
    let mut o = OpenOptions::new();
    let f = match std::fs::metadata(file) {
        Ok(m) if m.is_file() || m.file_type().is_block_device() => {
            o.read(true).custom_flags(libc::O_DIRECT).open(file).ok()?
        }
        Ok(_) => return None,
        Err(_) => {
            let dir = file
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            o.read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_TMPFILE)
                .open(dir)
                .ok()?
        }
    };
    // As the crate's `FdInfo::offset_align` (statx STATX_DIOALIGN, else the logical block
    // size of a device, else 512), without a ring: a second ring, even dropped, would
    // disturb the allocation count of the run.
    // SAFETY: `statx` is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty path with AT_EMPTY_PATH stats the open descriptor itself; `stx` is
    // a valid out-pointer.
    let r = unsafe {
        libc::statx(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0 && stx.stx_dio_offset_align != 0 {
        return Some(stx.stx_dio_offset_align);
    }
    let mut ssz: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer (and fails on a regular file).
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::BLKSSZGET as _, &mut ssz) } == 0 && ssz > 0 {
        return Some(ssz as u32);
    }
    Some(512)
}

/// Value parser of `--rw`.
fn rw(s: &str) -> Result<Rw, String> {
    Rw::parse(s).ok_or_else(|| "expected randread, read, randwrite or write".to_string())
}

/// Value parser of `--bs`: a byte count in `1..=64M`.
fn bs(s: &str) -> Result<usize, String> {
    match cli::bytes(s)? {
        n @ 1..=0x400_0000 => Ok(n as usize),
        n => Err(format!("{n} bytes is outside 1..=64M")),
    }
}

/// Value parser of `--qd`: a count in `1..=4096`.
fn qd(s: &str) -> Result<usize, String> {
    cli::count(4096)(s).map(|n| n as usize)
}

/// Value parser of `--seconds`: a positive number a `Duration` can hold (1e30 would
/// overflow it).
fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "not a positive number of seconds".to_string())
}

/// Value parser of `--threads`: a count in `1..=256`.
fn threads(s: &str) -> Result<usize, String> {
    cli::count(256)(s).map(|n| n as usize)
}

/// Value parser of `--ops`: a positive count.
fn ops(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| "not a positive number".to_string())
}

/// Bytes free to an unprivileged writer (`f_bavail` blocks) on the filesystem holding
/// `path`, and its block size.
fn free_space(path: &Path) -> Result<(u64, u64), String> {
    let c = cli::c_path(path)?;
    // SAFETY: `statvfs` is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer, both live across
    // the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("{}: statvfs: {e}", path.display()));
    }
    Ok((st.f_bavail as u64, (st.f_frsize as u64).max(1)))
}

/// Fill `path` to `size` bytes: create it (`had` is `None`) or grow it from `had` bytes.
/// Refused first, with nothing created or changed, when the bytes to add need more blocks
/// than its filesystem has free (the file's own blocks count as taken already). A fill
/// that fails all the same (the space taken meanwhile) is undone: a created file is
/// removed, a grown one cut back to its length.
fn grow(path: &Path, had: Option<u64>, size: u64) -> Result<(), String> {
    // The directory of a file still to be created ("new.bin" lives in ".").
    let on = match (had, path.parent()) {
        (Some(_), _) => path,
        (None, Some(dir)) if !dir.as_os_str().is_empty() => dir,
        (None, _) => Path::new("."),
    };
    let (avail, block) = free_space(on)?;
    let have = had.unwrap_or(0);
    // Whole blocks: a partial last block of the file is allocated already.
    let need = size.div_ceil(block).saturating_sub(have.div_ceil(block));
    if need > avail {
        return Err(format!(
            "--size {size}: filling {} to it needs {} more bytes, but its filesystem has \
             only {} bytes free",
            path.display(),
            size.saturating_sub(have),
            avail.saturating_mul(block)
        ));
    }
    fill_to(path, size).inspect_err(|_| match had {
        None => {
            let _ = std::fs::remove_file(path);
        }
        Some(len) => {
            let _ = OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(len));
        }
    })
}

/// Append a deterministic, non-zero pattern until the file is `size` bytes long.
fn fill_to(path: &Path, size: u64) -> Result<(), String> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut have = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    while have < size {
        let n = (size - have).min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])
            .map_err(|e| format!("{}: writing: {e}", path.display()))?;
        have += n as u64;
    }
    f.sync_all()
        .map_err(|e| format!("{}: fsync: {e}", path.display()))
}

fn rusage() -> (Duration, Duration) {
    // SAFETY: `rusage` is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

fn build_ring(qd: usize) -> Result<Ring, String> {
    let entries = (qd as u32).next_power_of_two().max(8);
    let base = Ring::builder()
        .entries(entries)
        .cq_entries(entries * 2)
        .files(4)
        .buffers(4)
        .ops(qd * 2 + 16);
    // Single issuer + deferred task running: completion work is batched into our own
    // enters. Fall back to a plain ring on kernels without them (< 6.1).
    // IOBENCH_RING=plain|single (no DEFER_TASKRUN) is for A/B comparisons.
    let mode = std::env::var("IOBENCH_RING").unwrap_or_default();
    if mode == "plain" {
        return base.build().map_err(|e| format!("io_uring: {e}"));
    }
    match base
        .clone()
        .single_issuer(true)
        .defer_taskrun(mode != "single")
        .build()
    {
        Ok(r) => Ok(r),
        Err(e) if matches!(e.kind(), ErrorKind::Unsupported { .. }) => {
            base.build().map_err(|e| format!("io_uring: {e}"))
        }
        Err(e) => Err(format!("io_uring: {e}")),
    }
}

fn run(a: &Args, pools: Vec<BufferPool>) -> Result<(), String> {
    // The kind is checked with `stat` before `open`: opening a FIFO would block until a
    // writer came, and nothing else can be benched.
    let not_benchable = || {
        format!(
            "FILE {}: not a regular file or block device",
            a.file.display()
        )
    };
    match (std::fs::metadata(&a.file), a.size) {
        (Err(e), Some(size)) if e.kind() == std::io::ErrorKind::NotFound => {
            grow(&a.file, None, size)?
        }
        (Err(e), None) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{}: no such file (give --size BYTES to create it)",
                a.file.display()
            ))
        }
        (Err(e), _) => return Err(format!("{}: {e}", a.file.display())),
        (Ok(m), _) if !(m.is_file() || m.file_type().is_block_device()) => {
            return Err(cli::not_a_file("FILE", &a.file, m.file_type()))
        }
        // A write job grows a regular file to the size asked for.
        (Ok(m), Some(size)) if a.rw.is_write() && m.is_file() && m.len() < size => {
            grow(&a.file, Some(m.len()), size)?
        }
        (Ok(_), _) => {}
    }
    let mut opts = OpenOptions::new();
    opts.read(true).write(a.rw.is_write());
    if a.direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let f: File = opts
        .open(&a.file)
        .map_err(|e| format!("{}: {e}", a.file.display()))?;

    // One ring per thread, each with a descriptor of FILE of its own; built, checked and
    // registered here, driven (and so enabled, for a single-issuer ring) by its thread.
    let mut rings = Vec::with_capacity(a.threads);
    let mut targets = Vec::with_capacity(a.threads);
    for _ in 0..a.threads {
        let fd = f
            .try_clone()
            .map_err(|e| format!("{}: {e}", a.file.display()))?;
        let mut ring = build_ring(a.qd)?;
        let target = ring
            .register(fd)
            .map_err(|e| format!("{}: {e}", a.file.display()))?;
        rings.push(ring);
        targets.push(target);
    }
    drop(f);
    let info = rings[0].info(targets[0]).map_err(|e| e.to_string())?;
    if !info.kind.is_seekable() {
        return Err(not_benchable());
    }
    if a.direct && a.bs % info.offset_align as usize != 0 {
        return Err(format!(
            "misaligned direct I/O: --bs {} is not a multiple of {}'s {}-byte alignment",
            a.bs,
            a.file.display(),
            info.offset_align
        ));
    }
    // A read job does not grow FILE: a --size past its end would bench reads of nothing.
    if let Some(s) = a.size.filter(|&s| !a.rw.is_write() && s > info.size) {
        cli::usage_exit::<Args>(format!(
            "--size {s} is larger than {} ({} bytes): a read pattern reads only what FILE \
             holds (give a smaller --size, or grow FILE with a write pattern first)",
            a.file.display(),
            info.size
        ));
    }
    let span = match a.size {
        Some(s) => s.min(info.size),
        None => info.size,
    };
    let blocks = span / a.bs as u64;
    if blocks == 0 {
        return Err(format!(
            "{}: {} bytes, smaller than one {}-byte block",
            a.file.display(),
            span,
            a.bs
        ));
    }
    // Thread i's pool (the one pool, when shared).
    let pool_of = |i: usize| &pools[i % pools.len()];
    let mut fixed = true;
    for (i, ring) in rings.iter_mut().enumerate() {
        fixed &= matches!(ring.register_pool(pool_of(i)), BufferRegistration::Fixed);
    }
    let cpus = if a.pin { allowed_cpus()? } else { Vec::new() };
    let fixed_file = rings[0].capabilities().fixed_files;
    let backend = match rings[0].backend() {
        BackendKind::Threads => "threads",
        BackendKind::Uring | BackendKind::Auto => "uring",
    };

    let job = Job {
        rw: a.rw,
        bs: a.bs,
        qd: a.qd,
        blocks,
    };
    let (limit, max_ops) = (a.seconds, a.ops);
    // Enough to keep --qd operations in flight a while: the ring's tables reach their
    // steady size before the measured window.
    let warmup = WARMUP_OPS.max(2 * a.qd as u64);
    // Every thread warms up, then all start together: the first wait ends the warm-ups,
    // the second (after this thread has read the clocks) starts the measured runs.
    let gate = std::sync::Barrier::new(a.threads + 1);
    let (runs, wall, (u0, s0), (u1, s1), allocs) = std::thread::scope(|scope| {
        let workers: Vec<_> = rings
            .into_iter()
            .zip(targets)
            .enumerate()
            .map(|(i, (mut ring, target))| {
                let gate = &gate;
                let pool = pool_of(i);
                let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
                std::thread::Builder::new()
                    .name(format!("iobench-{i}"))
                    .spawn_scoped(scope, move || {
                        let in_file = |e| format!("{}: {e}", a.file.display());
                        // Pinned before the ring's first enter.
                        let mut engine = Engine::new(job, target, pool, i as u64);
                        // (A thread that fails still meets the others at the gate.)
                        let warm = cpu.map_or(Ok(()), pin_to).and_then(|()| {
                            engine
                                .run(&mut ring, Some(warmup), |_, _| false)
                                .map_err(in_file)
                        });
                        engine.reset();
                        gate.wait();
                        gate.wait();
                        let t0 = std::time::Instant::now();
                        let run = warm.and_then(|()| {
                            engine
                                .run(&mut ring, max_ops, |_, el| max_ops.is_none() && el >= limit)
                                .map_err(in_file)
                        });
                        let wall = t0.elapsed().as_secs_f64();
                        run.and_then(|()| check(&ring, &engine.totals))?;
                        let st = ring.stats();
                        Ok(Run {
                            totals: engine.totals,
                            wall,
                            completed: st.completed,
                            enters: st.enters,
                        })
                    })
                    .map_err(|e| format!("starting thread {i}: {e}"))
            })
            .collect();
        // (A thread that failed to start leaves the gate short: fail before waiting at it.)
        let workers = match workers.into_iter().collect::<Result<Vec<_>, String>>() {
            Ok(w) => w,
            Err(e) => {
                eprintln!("iobench: {e}");
                std::process::exit(1);
            }
        };
        // Room for the results before the clocks start: the measured window allocates
        // nothing of its own.
        let mut runs: Vec<Result<Run, String>> = Vec::with_capacity(workers.len());
        gate.wait();
        let ru0 = rusage();
        let allocs0 = ALLOCS.load(Ordering::Relaxed);
        let t0 = std::time::Instant::now();
        gate.wait();
        for w in workers {
            runs.push(
                w.join()
                    .unwrap_or_else(|_| Err("a bench thread panicked".to_string())),
            );
        }
        let allocs = ALLOCS.load(Ordering::Relaxed) - allocs0;
        let wall = t0.elapsed().as_secs_f64();
        (runs, wall, ru0, rusage(), allocs)
    });
    let runs = runs.into_iter().collect::<Result<Vec<_>, String>>()?;
    // Every buffer back: each thread's (or the shared pool's, magazines included).
    for p in &pools {
        let st = p.stats();
        if st.free != st.total {
            return Err(format!(
                "inconsistent run: {} of {} buffers back",
                st.free, st.total
            ));
        }
    }

    let mut lat = engine::Histogram::new();
    let (mut ops, mut bytes, mut completed, mut enters) = (0, 0, 0, 0);
    let mut per_thread = String::new();
    for (i, r) in runs.iter().enumerate() {
        lat.merge(&r.totals.lat);
        ops += r.totals.ops;
        bytes += r.totals.bytes;
        completed += r.completed;
        enters += r.enters;
        per_thread.push_str(&format!(
            "{}{{\"iops\":{:.0},\"ops\":{},\"lat_p50_ns\":{},\"lat_p99_ns\":{}}}",
            if i > 0 { "," } else { "" },
            r.totals.ops as f64 / r.wall,
            r.totals.ops,
            r.totals.lat.percentile(50.0),
            r.totals.lat.percentile(99.0),
        ));
    }
    let iops = ops as f64 / wall;
    let bw = bytes as f64 / wall;
    let usr = (u1 - u0).as_secs_f64() / wall * 100.0;
    let sys = (s1 - s0).as_secs_f64() / wall * 100.0;
    let (p50, p99) = (lat.percentile(50.0), lat.percentile(99.0));
    println!(
        "{{\"backend\":\"{backend}\",\"iops\":{iops:.0},\"bw_bytes\":{bw:.0},\"lat_p50_ns\":{p50},\"lat_p99_ns\":{p99},\
         \"cpu_usr\":{usr:.1},\"cpu_sys\":{sys:.1},\"ops\":{ops},\"bytes\":{bytes},\"allocs\":{allocs},\
         \"threads\":{},\"pool\":\"{}\",\"pinned\":{},\"per_thread\":[{per_thread}]}}",
        a.threads,
        if a.shared_pool { "shared" } else { "per_thread" },
        a.pin
    );
    eprintln!(
        "iobench: {:?} bs={} qd={}{}{} on {}: {:.0} IOPS, {:.1} MiB/s, p50 {} ns, p99 {} ns, \
         cpu usr {:.1}% sys {:.1}%, {:.2} ops/enter, fixed buffers {}, fixed file {}, \
         backend {backend}",
        a.rw,
        a.bs,
        a.qd,
        if a.direct { " direct" } else { "" },
        if a.threads > 1 {
            format!(" x {} threads", a.threads)
        } else {
            String::new()
        },
        a.file.display(),
        iops,
        bw / (1 << 20) as f64,
        p50,
        p99,
        usr,
        sys,
        completed as f64 / enters.max(1) as f64,
        fixed,
        fixed_file,
    );
    Ok(())
}

/// RAM and swap of this machine, in bytes (`sysinfo`), if it can be told.
fn memory() -> Option<u128> {
    // SAFETY: `sysinfo` is plain old data; all-zero is a valid value.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `si` is a valid out-pointer.
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return None;
    }
    Some((si.totalram as u128 + si.totalswap as u128) * si.mem_unit.max(1) as u128)
}

/// The CPUs this process may run on (`sched_getaffinity`), in order.
fn allowed_cpus() -> Result<Vec<usize>, String> {
    // SAFETY: `cpu_set_t` is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid out-pointer of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Err(format!("--pin: {}", std::io::Error::last_os_error()));
    }
    let n = libc::CPU_SETSIZE as usize;
    // SAFETY: `CPU_ISSET` reads bit `c` of `set`, `c` < CPU_SETSIZE.
    Ok((0..n)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pin the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<(), String> {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE (it came from `allowed_cpus`).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu set of the size passed; 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(format!(
            "--pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// One thread's measured run.
struct Run {
    totals: engine::Totals,
    /// Seconds the thread's measured run took.
    wall: f64,
    completed: u64,
    enters: u64,
}

/// A run whose operations did not all complete or whose histogram missed an operation
/// fails instead of printing numbers (the buffers are counted once every thread is done).
fn check(ring: &Ring, t: &engine::Totals) -> Result<(), String> {
    let st = ring.stats();
    if st.submitted != st.completed || ring.in_flight() != 0 {
        return Err(format!(
            "inconsistent run: {st:?}, {} in flight",
            ring.in_flight(),
        ));
    }
    if t.lat.len() != t.ops {
        return Err(format!(
            "inconsistent run: {} operations, {} latencies",
            t.ops,
            t.lat.len()
        ));
    }
    Ok(())
}
