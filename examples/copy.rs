//! Split transfer: copies SRC to DST in chunks, reading each chunk into a fixed (registered)
//! pool buffer and writing that same buffer — no copy in user space.
//!
//! ```text
//! copy [--chunk BYTES] [--inflight N] [--serial] [--direct] [--progress] SRC DST
//! ```
//!
//! `copy --help` lists the options and their defaults. `-` is refused as SRC or DST (a
//! split copy works at offsets; `cat` streams).
//!
//! SRC and DST are regular files or block devices (a block device's whole size is
//! copied). A SRC on a pseudo-filesystem (procfs, sysfs, debugfs, tracefs, cgroupfs,
//! configfs, securityfs...) is refused: its files report a size (0, 4096) that is not
//! their content's; `cat` streams them. SRC is checked first (it exists, is readable, is
//! a file or device, not a pseudo-file); DST is
//! refused if it is SRC under any name (symlink, hard link, another node of the device).
//! Only then is DST created (or truncated, unless it is a block device). A progress bar
//! with rate and ETA goes to stderr when stderr is a terminal; a one-line summary with the throughput always
//! does (with the bytes of a direct copy's buffered tail, if any).

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use iocomplete::ring::default_max_chunk;
use iocomplete::split::{Job, Mode, SplitConfig, SplitDriver};
use iocomplete::{BufferPool, Driver, Error, Ring};

/// Copy SRC to DST in chunks through registered pool buffers (an io_uring split
/// transfer: each chunk is read into a pool buffer and written from that same buffer).
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "copy")]
pub struct Args {
    /// Chunk size in bytes (K, M, G suffixes: powers of 1024) [default: the block
    /// device's max_sectors_kb when SRC or DST is one, 1M otherwise]
    #[arg(long, value_name = "BYTES", value_parser = cli::chunk)]
    pub chunk: Option<u64>,
    /// Chunks in flight
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = cli::count(4096))]
    pub inflight: u32,
    /// One chunk at a time, in order
    #[arg(long)]
    pub serial: bool,
    /// O_DIRECT on both sides (the chunk must be a multiple of the alignment; a tail
    /// shorter than it goes through the page cache, as dd does)
    #[arg(long)]
    pub direct: bool,
    /// Print `copy: DONE/TOTAL bytes` as chunks land even when stderr is not a terminal
    /// (on a terminal a progress bar is drawn anyway)
    #[arg(long)]
    pub progress: bool,
    /// Source: a regular file or block device (a device is copied whole)
    #[arg(value_name = "SRC", value_parser = cli::named)]
    pub src: PathBuf,
    /// Destination: a regular file (created or truncated) or block device
    #[arg(value_name = "DST", value_parser = cli::named)]
    pub dst: PathBuf,
}

/// What a copy did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Bytes copied.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Chunk size used.
    pub chunk: u64,
    /// Children in flight (1 when serial).
    pub inflight: u32,
    /// Bytes copied through the page cache after a direct copy (the unaligned tail).
    pub tail: u64,
    /// Ring operations submitted for children (reads + writes).
    pub child_ops: u64,
}

impl Report {
    /// Throughput in MiB/s.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[path = "common/cli.rs"]
mod cli;

/// A file's identity: the same for every path (symlink, hard link) to it, and for every
/// node of one block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    Inode(u64, u64),
    Device(u64),
}

/// Check that `m` (of `path`, the argument `role`: SRC or DST) is a regular file or a
/// block device — what a split copy can take — and return its identity.
fn identity(role: &str, path: &Path, m: &Metadata) -> Result<Identity, String> {
    let t = m.file_type();
    if t.is_block_device() {
        Ok(Identity::Device(m.rdev()))
    } else if t.is_file() {
        Ok(Identity::Inode(m.dev(), m.ino()))
    } else {
        Err(cli::not_a_file(role, path, t))
    }
}

/// Pseudo-filesystems (`statfs` `f_type`, from linux/magic.h) whose files' sizes say
/// nothing of what a read returns.
const PSEUDO_FS: &[(u32, &str)] = &[
    (0x0000_9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x0027_e0eb, "cgroupfs"),
    (0x6367_7270, "cgroup2fs"),
    (0x6265_6570, "configfs"),
    (0x7363_6673, "securityfs"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x6573_5543, "fusectl"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x0765_5821, "resctrl"),
    (0xcafe_4a11, "bpffs"),
];

/// Refuse a SRC on a pseudo-filesystem: the size a split copy would take (0 for procfs,
/// 4096 for sysfs) is not the file's content.
fn check_not_pseudo(role: &str, path: &Path) -> Result<(), String> {
    let c = cli::c_path(path)?;
    // SAFETY: `statfs` is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer, both live across
    // the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("cannot open {role} {}: {e}", path.display()));
    }
    // The magic numbers are 32-bit; `f_type`'s width differs between architectures.
    match PSEUDO_FS
        .iter()
        .find(|(magic, _)| st.f_type as u32 == *magic)
    {
        Some((_, fs)) => Err(format!(
            "{role} {}: a pseudo-file ({fs}) whose size is not known; use cat",
            path.display()
        )),
        None => Ok(()),
    }
}

fn same_file(src: &Path, dst: &Path) -> String {
    format!(
        "{} and {} are the same file; refusing to copy a file onto itself",
        src.display(),
        dst.display()
    )
}

/// Open SRC for reading, fully checked (it exists, is readable, is a regular file or a
/// block device, not a pseudo-file) before anything touches DST. Its kind is checked with
/// `stat` before `open`, so a FIFO is refused instead of blocking the open.
fn open_src(path: &Path, direct: bool) -> Result<(File, Identity), String> {
    let cannot = |e: std::io::Error| format!("cannot open SRC {}: {e}", path.display());
    identity("SRC", path, &std::fs::metadata(path).map_err(cannot)?)?;
    check_not_pseudo("SRC", path)?;
    let mut o = OpenOptions::new();
    o.read(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let f = o.open(path).map_err(cannot)?;
    // What was opened, not what the path named a moment before.
    let id = identity("SRC", path, &f.metadata().map_err(cannot)?)?;
    Ok((f, id))
}

/// Open DST for writing, created if missing (the flag says so); refused if it is SRC
/// (same inode through any path, or the same block device) or not a regular file or
/// block device. Not truncated here: that waits until every check passed.
fn open_dst(path: &Path, direct: bool, src: (&Path, Identity)) -> Result<(File, bool), String> {
    let cannot = |e: std::io::Error| format!("cannot open DST {}: {e}", path.display());
    let existed = match std::fs::metadata(path) {
        Ok(m) if identity("DST", path, &m)? == src.1 => return Err(same_file(src.0, path)),
        Ok(_) => {
            check_not_pseudo("DST", path)?;
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(cannot(e)),
    };
    let mut o = OpenOptions::new();
    o.write(true).create(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let f = o.open(path).map_err(cannot)?;
    let checked = f
        .metadata()
        .map_err(cannot)
        .and_then(|m| match identity("DST", path, &m)? {
            id if id == src.1 => Err(same_file(src.0, path)),
            _ => Ok(()),
        });
    match checked {
        Ok(()) => Ok((f, !existed)),
        Err(e) => {
            if !existed {
                let _ = std::fs::remove_file(path);
            }
            Err(e)
        }
    }
}

/// Progress: the bytes copied before this job plus the job's own.
struct Progress<'a> {
    src: &'a Path,
    dst: &'a Path,
    base: u64,
    total: u64,
    f: &'a mut dyn FnMut(u64, u64),
}

/// Run a copy job's driver to its end, reporting its progress as chunks land: the child
/// operations it took, or why it failed.
fn finish_job(
    ring: &mut Ring,
    driver: &mut SplitDriver,
    (offset, len): (u64, u64),
    progress: &mut Progress<'_>,
) -> Result<u64, String> {
    let mut reported = 0;
    let done = loop {
        let out = driver.step(ring, Some(Duration::from_millis(100)));
        let moved = driver.bytes_transferred();
        if moved > reported {
            reported = moved;
            (progress.f)(progress.base + moved, progress.total);
        }
        if let Some(done) = out.map_err(|e| e.to_string())? {
            break done;
        }
    };
    match done.status {
        Ok(()) if done.bytes == len => Ok(driver.stats().child_ops),
        Ok(()) => Err(format!(
            "source ended early: {} of {len} bytes from offset {offset}",
            done.bytes
        )),
        Err(e) => Err(format!(
            "{e} (after {} bytes; SRC {}, DST {})",
            offset + done.bytes,
            progress.src.display(),
            progress.dst.display()
        )),
    }
}

/// Everything checked and ready before DST is truncated: the ring with both targets, the
/// pool, and the driver of the main job (whose `new` validates the request).
struct Ready {
    ring: Ring,
    pool: BufferPool,
    driver: SplitDriver,
    size: u64,
    aligned: u64,
    chunk: u64,
    inflight: u32,
}

fn prepare(args: &Args, src_file: File, dst_file: &File) -> Result<Ready, String> {
    let inflight = if args.serial { 1 } else { args.inflight };
    let mut ring = Ring::builder()
        .entries((2 * inflight + 8).next_power_of_two().min(4096))
        .build()
        .map_err(|e| e.to_string())?;
    let src = ring.register(src_file).map_err(|e| e.to_string())?;
    let dst = ring.register_dup(dst_file).map_err(|e| e.to_string())?;
    let (si, di) = (
        ring.info(src).map_err(|e| e.to_string())?,
        ring.info(dst).map_err(|e| e.to_string())?,
    );
    let size = si.size;
    let align = u64::from(si.offset_align.max(di.offset_align));
    let device_chunk = default_max_chunk(&[si, di]);
    let chunk = args.chunk.or(device_chunk).unwrap_or(1 << 20);
    if args.direct && chunk % align != 0 {
        return Err(format!(
            "--chunk {chunk} is not a multiple of the direct-I/O alignment {align} \
             (misaligned direct chunk)"
        ));
    }
    let pool = usize::try_from(chunk)
        .map_err(|_| Error::invalid("chunk too large"))
        .and_then(|len| {
            BufferPool::builder()
                .slots(inflight as usize)
                .slot_len(len)
                .build()
        })
        .map_err(|e| format!("--chunk {chunk}: {e}"))?;
    ring.register_pool(&pool);
    let mode = if args.serial {
        Mode::Serial
    } else {
        Mode::Parallel {
            max_in_flight: inflight,
        }
    };
    let aligned = if args.direct {
        size - size % align
    } else {
        size
    };
    let job = Job::Copy {
        src,
        src_offset: 0,
        dst,
        dst_offset: 0,
        len: aligned,
    };
    let config = SplitConfig::new().mode(mode).max_chunk(chunk);
    let driver = SplitDriver::new(&mut ring, &pool, job, config).map_err(|e| e.to_string())?;
    Ok(Ready {
        ring,
        pool,
        driver,
        size,
        aligned,
        chunk,
        inflight,
    })
}

/// Copy `args.src` to `args.dst`; `progress(done, total)` is called as chunks land.
///
/// Nothing is created or truncated until SRC, DST and every option are checked: a
/// refusal leaves DST as it was (a DST created for the copy is removed again).
pub fn copy(args: &Args, progress: &mut dyn FnMut(u64, u64)) -> Result<Report, String> {
    let started = Instant::now();
    let (src_file, src_id) = open_src(&args.src, args.direct)?;
    let (dst_file, created) = open_dst(&args.dst, args.direct, (&args.src, src_id))?;
    let mut r = match prepare(args, src_file, &dst_file) {
        Ok(r) => r,
        Err(e) => {
            if created {
                let _ = std::fs::remove_file(&args.dst);
            }
            return Err(e);
        }
    };
    // Every check passed: now an existing regular file is truncated.
    let is_file = dst_file.metadata().is_ok_and(|m| m.is_file());
    if is_file {
        dst_file
            .set_len(0)
            .map_err(|e| format!("cannot truncate {}: {e}", args.dst.display()))?;
    }
    drop(dst_file);
    let mut p = Progress {
        src: &args.src,
        dst: &args.dst,
        base: 0,
        total: r.size,
        f: progress,
    };
    let (ring, pool) = (&mut r.ring, &r.pool);
    let mut child_ops = finish_job(ring, &mut r.driver, (0, r.aligned), &mut p)?;
    let tail = r.size - r.aligned;
    if tail > 0 {
        // Direct I/O cannot move a partial block: finish through the page cache.
        let s = ring
            .register(open_src(&args.src, false)?.0)
            .map_err(|e| e.to_string())?;
        let d = ring
            .register(open_dst_existing(&args.dst)?)
            .map_err(|e| e.to_string())?;
        p.base = r.aligned;
        let job = Job::Copy {
            src: s,
            src_offset: r.aligned,
            dst: d,
            dst_offset: r.aligned,
            len: tail,
        };
        let config = SplitConfig::new().mode(Mode::Serial).max_chunk(r.chunk);
        let mut driver = SplitDriver::new(ring, pool, job, config).map_err(|e| e.to_string())?;
        child_ops += finish_job(ring, &mut driver, (r.aligned, tail), &mut p)?;
    }
    Ok(Report {
        bytes: r.size,
        elapsed: started.elapsed(),
        chunk: r.chunk,
        inflight: r.inflight,
        tail,
        child_ops,
    })
}

fn open_dst_existing(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// `n` bytes as KiB when whole KiB, else as bytes.
fn size(n: u64) -> String {
    if n % 1024 == 0 {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

fn main() {
    let args = Args::parse();
    // On a terminal: a bar with rate and ETA (drawn nowhere else).
    let bar = cli::progress(0);
    let lines = args.progress && bar.is_hidden();
    let mut progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
        if lines {
            eprintln!("copy: {done}/{total} bytes");
        }
    };
    match copy(&args, &mut progress) {
        Ok(r) => {
            bar.finish_and_clear();
            let tail = if r.tail > 0 {
                format!(", last {} bytes buffered", r.tail)
            } else {
                String::new()
            };
            eprintln!(
                "copy: {} bytes in {:.3} s, {:.1} MiB/s (chunk {}, {} in flight{}{}{tail})",
                r.bytes,
                r.elapsed.as_secs_f64(),
                r.mib_per_s(),
                size(r.chunk),
                r.inflight,
                if args.serial { ", serial" } else { "" },
                if args.direct { ", direct" } else { "" },
            );
        }
        Err(e) => {
            bar.abandon();
            eprintln!("copy: {e}");
            std::process::exit(1);
        }
    }
}
