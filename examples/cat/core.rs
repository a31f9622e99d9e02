//! The `cat` example's core: argument parsing, the continuous reader, and forwarding each
//! pooled buffer to stdout through the ring. It neither prints nor exits (main.rs does).

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{IsTerminal, Seek};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use iocomplete::{
    BufferPool, Completion, CompletionQueue, ContinuousReader, Driver, Error, FdKind, FinishReason,
    Op, PoolBuf, Ring, Target,
};

/// Stream a file, block device, FIFO, pipe or tty to stdout through a continuous reader
/// (each pooled buffer is written from the slot it was read into).
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "cat")]
pub(crate) struct Opts {
    /// Reads in flight (files and block devices)
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = cli::count(4096))]
    pending: u32,
    /// Read size in bytes (K, M, G suffixes: powers of 1024)
    #[arg(long, value_name = "BYTES", default_value = "128k", value_parser = chunk)]
    chunk: usize,
    /// Header room reserved in front of each slot's data (not written out)
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = header)]
    header: usize,
    /// Open PATH with O_DIRECT (the chunk must be a multiple of its alignment)
    #[arg(long)]
    direct: bool,
    /// Forward in file order (always so: files and block devices are ordered, streams
    /// are anyway; accepted for old command lines)
    #[arg(long)]
    ordered: bool,
    /// The input; `-` is stdin
    #[arg(value_name = "PATH")]
    path: String,
}

/// What one run did.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    bytes: u64,
    elapsed: Duration,
    opts: Opts,
    multishot: bool,
    seekable: bool,
}

impl Summary {
    /// The one-line summary for stderr.
    pub(crate) fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let o = &self.opts;
        format!(
            "cat: {} bytes in {:.3} s, {:.1} MiB/s (pending {}, chunk {}, header {}, {}{}{})",
            self.bytes,
            secs,
            self.bytes as f64 / secs / (1 << 20) as f64,
            o.pending,
            o.chunk,
            o.header,
            if o.direct { "direct" } else { "buffered" },
            if self.seekable {
                ", ordered"
            } else {
                ", stream"
            },
            if self.multishot {
                ", multishot reads"
            } else {
                ""
            },
        )
    }
}

#[path = "../common/cli.rs"]
mod cli;

/// Value parser of `--chunk`: a byte count in `1..=1G`.
fn chunk(s: &str) -> Result<usize, String> {
    cli::chunk(s).map(|n| n as usize)
}

/// Value parser of `--header`: a byte count up to 1 MiB.
fn header(s: &str) -> Result<usize, String> {
    match cli::bytes(s)? {
        n @ 0..=0x10_0000 => Ok(n as usize),
        n => Err(format!("{n} bytes is more than 1M")),
    }
}

/// Writes buffers to stdout through the ring, one at a time (stdout may be a pipe or a
/// tty, where only one write in flight keeps the order), at the current file position.
struct Writer {
    target: Target,
    queue: VecDeque<PoolBuf>,
    done: Arc<CompletionQueue<Completion>>,
    busy: bool,
    written: u64,
    error: Option<Error>,
}

const TAG_WRITE: u64 = 1;
const TAG_POLL: u64 = 2;

impl Writer {
    fn pump(&mut self, ring: &mut Ring) {
        if self.busy || self.error.is_some() {
            return;
        }
        if let Some(buf) = self.queue.pop_front() {
            // At the file position, advancing it (stdout may be a file, opened for append
            // or not, that the next command writes after us).
            let op = Op::write_cursor(self.target, buf).tag(TAG_WRITE);
            ring.submit(op).to_queue(&self.done);
            self.busy = true;
        }
    }

    fn collect(&mut self, ring: &mut Ring) {
        while let Some(c) = self.done.pop() {
            self.busy = false;
            let result = c.result();
            if c.tag() == TAG_POLL {
                if let Err(e) = result {
                    self.error.get_or_insert(e);
                }
                continue;
            }
            let Some(mut buf) = c.into_buf() else {
                self.error
                    .get_or_insert(Error::invalid("write gave no buffer back"));
                continue;
            };
            match result {
                Ok(n) if n == buf.len() => self.written += n as u64,
                Ok(n) if n > 0 => {
                    // Short write: the rest goes next (moved to the front of the slot —
                    // the only copy cat makes, and only on this rare path).
                    self.written += n as u64;
                    let len = buf.len();
                    buf.data_mut().copy_within(n.., 0);
                    let _ = buf.set_len(len - n);
                    self.queue.push_front(buf);
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    // Non-blocking stdout is full: wait until it is writable.
                    self.queue.push_front(buf);
                    let op = Op::poll(self.target, libc::POLLOUT as u32).tag(TAG_POLL);
                    ring.submit(op).to_queue(&self.done);
                    self.busy = true;
                }
                Ok(_) => {
                    self.error.get_or_insert(Error::from_errno(libc::EIO));
                }
                Err(e) => {
                    self.error.get_or_insert(e);
                }
            }
        }
    }

    fn idle(&self) -> bool {
        !self.busy && (self.queue.is_empty() || self.error.is_some())
    }
}

/// `(st_dev, st_ino)` of the regular file open on `fd`; `None` for anything else (or when
/// `fstat` fails: reading or writing it then fails on its own).
fn regular_file(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    let m = std::fs::File::from(fd.try_clone_to_owned().ok()?)
        .metadata()
        .ok()?;
    m.is_file().then(|| (m.dev(), m.ino()))
}

/// Refuse an input that is stdout's regular file (`cat F >> F`): cat would read back what
/// it wrote, on and on. As GNU cat says it, before anything is written.
fn check_not_output(
    input: BorrowedFd<'_>,
    stdout: BorrowedFd<'_>,
    name: &str,
) -> Result<(), String> {
    match regular_file(stdout) {
        Some(out) if regular_file(input) == Some(out) => {
            Err(format!("{name}: input file is output file"))
        }
        _ => Ok(()),
    }
}

/// Stream `opts.path` (or `stdin` for `-`) to `stdout`. Errors are full messages.
pub(crate) fn run(
    opts: Opts,
    stdin: BorrowedFd<'_>,
    stdout: BorrowedFd<'_>,
) -> Result<Summary, String> {
    let mut ring = Ring::builder()
        .entries(256)
        .build()
        .map_err(|e| format!("io_uring: {e}"))?;

    let (source, name) = if opts.path == "-" {
        if opts.direct {
            return Err("--direct needs a file or block device PATH, not stdin".into());
        }
        check_not_output(stdin, stdout, "stdin")?;
        let t = ring
            .register_dup(stdin)
            .map_err(|e| format!("stdin: {e}"))?;
        (t, "stdin".to_string())
    } else {
        let mut o = OpenOptions::new();
        o.read(true);
        if opts.direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let f = o
            .open(&opts.path)
            .map_err(|e| format!("{}: {e}", opts.path))?;
        check_not_output(f.as_fd(), stdout, &opts.path)?;
        let t = ring
            .register(f)
            .map_err(|e| format!("{}: {e}", opts.path))?;
        (t, opts.path.clone())
    };
    let info = ring.info(source).map_err(|e| format!("{name}: {e}"))?;
    if opts.direct && !info.direct {
        return Err(format!("{name}: --direct needs a file or block device"));
    }
    let seekable = info.kind.is_seekable();
    // A seekable stdin (`cat - < file`) continues from its current position.
    let start = if seekable && opts.path == "-" {
        let mut f = std::fs::File::from(
            stdin
                .try_clone_to_owned()
                .map_err(|e| format!("stdin: {e}"))?,
        );
        f.stream_position().map_err(|e| format!("stdin: {e}"))?
    } else {
        0
    };

    // A regular file needs no slot larger than what is left of it (a 6-byte file needs no
    // 1 GiB slot); with --direct, rounded up to the file's alignment (the chunk given is a
    // multiple of it, so this never grows it).
    let chunk_len = if info.kind == FdKind::File {
        let left = info.size.saturating_sub(start).max(1);
        let align = if opts.direct {
            u64::from(info.offset_align.max(1))
        } else {
            1
        };
        let capped = left.div_ceil(align).saturating_mul(align);
        usize::try_from(capped).map_or(opts.chunk, |c| c.min(opts.chunk))
    } else {
        opts.chunk
    };
    // What the reader needs (see `ContinuousReaderBuilder`): its pending reads, plus one
    // when ordered (the reorder window is then capped at the pool's slots minus one), plus
    // what the writer holds: one buffer being written and one queued behind it. More slots
    // would only allocate more memory: the writer, one write at a time, is the bottleneck.
    let slots = opts.pending as usize + usize::from(seekable) + 2;
    let pool = BufferPool::builder()
        .slots(slots)
        .slot_len(chunk_len)
        .header_len(opts.header)
        .build()
        .map_err(|e| format!("buffer pool: {e}"))?;
    let _ = ring.register_pool(&pool);
    let out = ring
        .register_dup(stdout)
        .map_err(|e| format!("stdout: {e}"))?;
    if !ring.info(out).map_err(|e| format!("stdout: {e}"))?.writable {
        return Err("stdout is not open for writing".into());
    }

    let chunk = u32::try_from(chunk_len).map_err(|_| "--chunk too large".to_string())?;
    // Delivered buffers, in delivery order, waiting to be written. Every queued buffer
    // owns a distinct pool slot, so a queue as large as the pool never refuses one.
    let bufs = Arc::new(CompletionQueue::<PoolBuf>::new(slots));
    let forward = bufs.clone();
    let mut reader = ContinuousReader::builder(source, &pool)
        .pending_reads(opts.pending)
        .transfer_len(chunk)
        // File order for files and block devices (streams are in order anyway).
        .ordered(seekable)
        .start_at(start)
        .on_read(move |buf, _offset| {
            // Never full (see `bufs`); if it were, dropping the buffer would lose data,
            // which the byte count check below would report.
            let _ = forward.push(buf);
        })
        // Without `on_failed`, the error comes back in the report's `FinishReason::Failed`.
        .build(&mut ring)
        .map_err(|e| format!("cannot read {name}: {e}"))?;

    let started = Instant::now();
    // A bar with rate and ETA on a terminal stderr, for a source of known size whose data
    // does not go to the terminal itself.
    let bar = match seekable && !stdout.is_terminal() {
        true => cli::progress(info.size.saturating_sub(start)),
        false => indicatif::ProgressBar::hidden(),
    };
    let mut w = Writer {
        target: out,
        queue: VecDeque::with_capacity(slots),
        done: Arc::new(CompletionQueue::new(4)),
        busy: false,
        written: 0,
        error: None,
    };
    let mut stopping = false;
    let report = loop {
        let r = reader
            .step(&mut ring, None)
            .map_err(|e| format!("io_uring: {e}"))?;
        while let Some(b) = bufs.pop() {
            w.queue.push_back(b);
        }
        w.collect(&mut ring);
        w.pump(&mut ring);
        bar.set_position(w.written);
        if let Some(r) = r {
            break r;
        }
        if w.error.is_some() && !stopping {
            reader.cancel(&mut ring);
            stopping = true;
        }
    };
    while !w.idle() {
        ring.run_once(Some(Duration::from_millis(100)))
            .map_err(|e| format!("io_uring: {e}"))?;
        w.collect(&mut ring);
        w.pump(&mut ring);
        bar.set_position(w.written);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    if let Some(e) = w.error {
        return Err(format!("write error: {e}"));
    }
    match report.reason {
        FinishReason::Eof | FinishReason::EndOfRange => {}
        FinishReason::Failed(e) => return Err(format!("{name}: read error: {e}")),
        FinishReason::Cancelled => return Err(format!("{name}: cancelled")),
    }
    if w.written != report.bytes {
        return Err(format!(
            "read {} bytes but wrote {}",
            report.bytes, w.written
        ));
    }
    drop(reader);
    let _ = ring.close(source);
    let _ = ring.close(out);
    Ok(Summary {
        bytes: w.written,
        elapsed,
        opts,
        multishot: report.multishot,
        seekable,
    })
}
