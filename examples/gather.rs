//! DMA-style scatter/gather: reads the listed extents of a file in one transaction (one
//! scatter/gather list of pooled buffers, executed as vectored fixed-buffer transfers) and
//! writes them, concatenated in the order given, to stdout.
//!
//! ```text
//! gather [--max-transfer BYTES] [--max-segments N] [--inflight N] FILE OFFSET:LEN...
//! ```
//!
//! - `--max-transfer BYTES`: largest transfer (suffixes K, M, G; default 2 GiB − 4 KiB).
//! - `--max-segments N`: most buffers (iovecs) per transfer (1..=1024, default 1024).
//! - `--inflight N`: transfers in flight (default 4).
//!
//! FILE is a regular file or a block device (anything else is refused, checked before it
//! is opened). Numbers accept K/M/G suffixes (powers of 1024). An extent past the end of
//! the file is an error, reported before anything is read. A one-line summary goes to
//! stderr.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iocomplete::dma::{DmaConfig, DmaDriver, SgList};
use iocomplete::ring::MAX_TRANSFER;
use iocomplete::Direction;
use iocomplete::{BufferPool, Driver, Ring};

/// The usage line.
pub const USAGE: &str =
    "usage: gather [--max-transfer BYTES] [--max-segments N] [--inflight N] FILE OFFSET:LEN...";

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--max-transfer`.
    pub max_transfer: u64,
    /// `--max-segments`.
    pub max_segments: u32,
    /// `--inflight`.
    pub inflight: u32,
    /// The file.
    pub file: PathBuf,
    /// The extents, as (offset, length), in output order.
    pub extents: Vec<(u64, u64)>,
}

/// What a gather did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Extents read.
    pub extents: usize,
    /// Scatter/gather entries (pool buffers) they took.
    pub segments: usize,
    /// Bytes written out.
    pub bytes: u64,
    /// Transfers (vectored operations) the transaction ran.
    pub transfers: u64,
    /// Largest number of buffers one transfer carried.
    pub max_pieces: usize,
    /// Wall time.
    pub elapsed: Duration,
}

#[path = "common/cli.rs"]
mod cli;

use cli::{parse_count, parse_size};

/// Parse the arguments (without the program name).
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut it = args.into_iter();
    let mut max_transfer = MAX_TRANSFER;
    let mut max_segments = 1024u32;
    let mut inflight = 4u32;
    let mut file = None;
    let mut extents = Vec::new();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--max-transfer" => {
                let v = value("--max-transfer")?;
                max_transfer = parse_size(&v)?;
                if !(1..=MAX_TRANSFER).contains(&max_transfer) {
                    return Err(format!("--max-transfer {v} is outside 1..={MAX_TRANSFER}"));
                }
            }
            "--max-segments" => max_segments = parse_count(&a, &value(&a)?, 1024)?,
            "--inflight" => inflight = parse_count(&a, &value(&a)?, 1024)?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            _ if file.is_none() => file = Some(PathBuf::from(a)),
            _ => {
                let (off, len) = a
                    .split_once(':')
                    .ok_or_else(|| format!("extent '{a}' is not OFFSET:LEN"))?;
                let off = parse_size(off).map_err(|e| format!("{e} in extent '{a}'"))?;
                let len = parse_size(len).map_err(|e| format!("{e} in extent '{a}'"))?;
                if len == 0 {
                    return Err(format!("extent '{a}' is empty"));
                }
                extents.push((off, len));
            }
        }
    }
    let file = file.ok_or_else(|| format!("need FILE\n{USAGE}"))?;
    if extents.is_empty() {
        return Err(format!("need at least one OFFSET:LEN\n{USAGE}"));
    }
    Ok(Args {
        max_transfer,
        max_segments,
        inflight,
        file,
        extents,
    })
}

/// Read the extents of `args.file` in one transaction and write them to `out`.
pub fn gather(args: &Args, out: &mut dyn Write) -> Result<Report, String> {
    let started = Instant::now();
    let cannot = |e: std::io::Error| format!("cannot open {}: {e}", args.file.display());
    // The kind is checked before `open`, which would block on a FIFO until a writer came.
    let kind = std::fs::metadata(&args.file).map_err(cannot)?.file_type();
    if !(kind.is_file() || kind.is_block_device()) {
        return Err(format!(
            "{}: not a regular file or block device",
            args.file.display()
        ));
    }
    let file = File::open(&args.file).map_err(cannot)?;
    let mut ring = Ring::builder()
        .entries(64)
        .build()
        .map_err(|e| e.to_string())?;
    let target = ring.register(file).map_err(|e| e.to_string())?;
    let info = ring.info(target).map_err(|e| e.to_string())?;
    if !info.kind.is_seekable() {
        return Err(format!(
            "{}: not a regular file or block device",
            args.file.display()
        ));
    }
    let size = info.size;
    for &(off, len) in &args.extents {
        if off.checked_add(len).is_none_or(|end| end > size) {
            return Err(format!(
                "extent {off}:{len} extends past the end of {} ({size} bytes)",
                args.file.display()
            ));
        }
    }
    let longest = args.extents.iter().map(|e| e.1).max().unwrap_or(1);
    let slot = longest.next_multiple_of(4096).min(64 * 1024);
    let segments: u64 = args.extents.iter().map(|e| e.1.div_ceil(slot)).sum();
    let pool = BufferPool::builder()
        .slots(segments as usize)
        .slot_len(slot as usize)
        .build()
        .map_err(|e| e.to_string())?;
    ring.register_pool(&pool);
    let mut sg = SgList::with_capacity(segments as usize);
    for &(off, len) in &args.extents {
        sg.push_extent(&pool, off, len).map_err(|e| e.to_string())?;
    }
    let config = DmaConfig::new()
        .max_transfer(args.max_transfer)
        .max_segments(args.max_segments)
        .max_in_flight(args.inflight);
    // (transfers, most buffers in one), counted by the per-transfer callback.
    let counts = Arc::new(Mutex::new((0u64, 0usize)));
    let c = counts.clone();
    let mut driver = DmaDriver::builder(target, sg, Direction::Read)
        .config(config)
        .on_transfer(move |r| {
            let mut c = c.lock().unwrap();
            c.0 += 1;
            c.1 = c.1.max(r.transfer.segment_count);
        })
        .build(&mut ring)
        .map_err(|e| e.to_string())?;
    let (done, sg) = driver.run(&mut ring).map_err(|e| e.to_string())?;
    let (transfers, max_pieces) = *counts.lock().unwrap();
    done.status
        .map_err(|e| format!("{e} (after {} bytes)", done.bytes))?;
    let total = sg.total_len();
    if done.bytes != total {
        return Err(format!(
            "{} shrank: read {} of {total} bytes",
            args.file.display(),
            done.bytes
        ));
    }
    let n = sg.len();
    for buf in sg.bufs() {
        out.write_all(buf.data())
            .map_err(|e| format!("cannot write the output: {e}"))?;
    }
    out.flush()
        .map_err(|e| format!("cannot write the output: {e}"))?;
    Ok(Report {
        extents: args.extents.len(),
        segments: n,
        bytes: total,
        transfers,
        max_pieces,
        elapsed: started.elapsed(),
    })
}

fn main() {
    let args = cli::or_usage_exit("gather", parse_args(std::env::args().skip(1)));
    // Write straight to the descriptor (no line buffering of binary data).
    let mut out = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            eprintln!("gather: stdout: {e}");
            std::process::exit(1);
        }
    };
    match gather(&args, &mut out) {
        Ok(r) => eprintln!(
            "gather: {} extents, {} bytes in {} segments, {} transfers (up to {} buffers each), {:.3} ms",
            r.extents,
            r.bytes,
            r.segments,
            r.transfers,
            r.max_pieces,
            r.elapsed.as_secs_f64() * 1e3
        ),
        Err(e) => {
            eprintln!("gather: {e}");
            std::process::exit(1);
        }
    }
}
