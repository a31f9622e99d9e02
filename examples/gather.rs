//! DMA-style scatter/gather: reads the listed extents of a file in one transaction (one
//! scatter/gather list of pooled buffers, executed as vectored fixed-buffer transfers) and
//! writes them, concatenated in the order given, to stdout.
//!
//! ```text
//! gather [--max-transfer BYTES] [--max-segments N] [--inflight N] FILE OFFSET:LEN...
//! ```
//!
//! `gather --help` lists the options and their defaults.
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

use clap::Parser;
use iocomplete::dma::{DmaConfig, DmaDriver, SgList};
use iocomplete::ring::MAX_TRANSFER;
use iocomplete::Direction;
use iocomplete::{BufferPool, Driver, Ring};

/// Read extents of FILE in one scatter/gather transaction and write them, concatenated
/// in the order given, to stdout.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "gather")]
pub struct Args {
    /// Largest transfer in bytes (K, M, G suffixes: powers of 1024)
    #[arg(long, value_name = "BYTES", default_value_t = MAX_TRANSFER, value_parser = max_transfer)]
    pub max_transfer: u64,
    /// Most buffers (iovecs) per transfer
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = cli::count(1024))]
    pub max_segments: u32,
    /// Transfers in flight
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = cli::count(1024))]
    pub inflight: u32,
    /// A regular file or block device
    #[arg(value_name = "FILE", value_parser = cli::named)]
    pub file: PathBuf,
    /// Extents to read, in output order (K, M, G suffixes)
    #[arg(value_name = "OFFSET:LEN", required = true, value_parser = extent)]
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

/// Value parser of `--max-transfer`: a byte count in `1..=MAX_TRANSFER`.
fn max_transfer(s: &str) -> Result<u64, String> {
    match cli::bytes(s)? {
        n @ 1..=MAX_TRANSFER => Ok(n),
        n => Err(format!("{n} is outside 1..={MAX_TRANSFER}")),
    }
}

/// Value parser of an extent: `OFFSET:LEN`, both byte counts, LEN not 0.
fn extent(s: &str) -> Result<(u64, u64), String> {
    let (off, len) = s.split_once(':').ok_or("not OFFSET:LEN")?;
    match (cli::bytes(off)?, cli::bytes(len)?) {
        (_, 0) => Err("the extent is empty".to_string()),
        e => Ok(e),
    }
}

/// Read the extents of `args.file` in one transaction and write them to `out`.
pub fn gather(args: &Args, out: &mut dyn Write) -> Result<Report, String> {
    let started = Instant::now();
    let cannot = |e: std::io::Error| format!("cannot open FILE {}: {e}", args.file.display());
    // The kind is checked before `open`, which would block on a FIFO until a writer came.
    let kind = std::fs::metadata(&args.file).map_err(cannot)?.file_type();
    if !(kind.is_file() || kind.is_block_device()) {
        return Err(cli::not_a_file("FILE", &args.file, kind));
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
            "FILE {}: not a regular file or block device",
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
    let args = Args::parse();
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
