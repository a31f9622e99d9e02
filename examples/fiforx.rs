//! `fiforx --len N PATH`: read exactly N bytes from a FIFO-like source (pipe, named FIFO,
//! socket, tty, character device; `-` = stdin) and write them to stdout.
//!
//! The source is opened `O_NONBLOCK` and read by a [`FifoReceiver`]: when it runs dry,
//! one readiness notification is armed and the receive resumes when it fires — no busy
//! loop, no blocked thread. Received buffers go to stdout as they are (io_uring writes of
//! the same pooled buffers, no copy) while the next one fills. A one-line summary goes to
//! stderr. Exits non-zero with a clear message if the source ends before N bytes (saying
//! how many arrived; those are still written), the path is missing, N is not a number or
//! is 0, or the source is a regular file (not FIFO-like).
//!
//! ```text
//! mkfifo /tmp/f; (sleep 1; head -c 1000000 /dev/urandom > /tmp/f) &
//! cargo run --release --example fiforx -- --len 1000000 /tmp/f > out.bin
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use clap::Parser;
use iocomplete::{
    BufferPool, Driver, FdKind, FifoReceiver, FifoStatus, Op, PoolBuf, Ring, Target, Ticket,
};

/// Bytes per receive transaction (one pooled buffer).
const CHUNK: usize = 256 * 1024;
/// Buffers: one filling, the others on their way to stdout.
const SLOTS: usize = 4;

/// What a successful run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Summary {
    /// Bytes received and written.
    bytes: u64,
    /// Readiness notifications armed (the source ran dry mid-receive).
    readiness_waits: u64,
    /// Receive transactions.
    receives: u64,
    /// Whether a named FIFO had no writer yet and fiforx waited for one.
    waited_for_writer: bool,
    /// Whether reads learnt that the source ran dry from `RWF_NOWAIT` (else from a
    /// `poll(2)` before each read: the source refused `RWF_NOWAIT`).
    nowait_reads: bool,
    /// From the first receive to the last byte written.
    elapsed: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let mib_s = if secs > 0.0 {
            self.bytes as f64 / secs / (1024.0 * 1024.0)
        } else {
            0.0
        };
        write!(
            f,
            "{} bytes in {secs:.3} s ({mib_s:.1} MiB/s), {} readiness waits, {} receives",
            self.bytes, self.readiness_waits, self.receives
        )?;
        if self.waited_for_writer {
            f.write_str(", waited for a writer")?;
        }
        f.write_str(if self.nowait_reads {
            ", RWF_NOWAIT reads"
        } else {
            ", poll-first reads (the source refused RWF_NOWAIT)"
        })
    }
}

/// Read exactly N bytes from a FIFO-like source (pipe, named FIFO, socket, tty, character
/// device) and write them to stdout.
#[derive(Debug, Parser)]
#[command(name = "fiforx")]
struct Args {
    /// Bytes to read, exactly (K, M, G suffixes: powers of 1024); required
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = len)]
    len: u64,
    /// The source; `-` is stdin
    #[arg(value_name = "PATH")]
    path: String,
}

/// Why a run failed: a message for stderr (exit status 1).
#[derive(Debug)]
struct Failure {
    /// What went wrong, in one line.
    message: String,
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
    }
}

#[path = "common/cli.rs"]
mod cli;

/// Value parser of `--len`: a byte count, at least 1.
fn len(s: &str) -> Result<u64, String> {
    match cli::parse_bytes(s) {
        Some(0) => Err("--len must be at least 1: fiforx reads exactly N bytes".to_string()),
        Some(n) => Ok(n),
        None => Err(format!(
            "bad --len value '{s}': expected a byte count like 4096 or 64K"
        )),
    }
}

/// Restores the `O_NONBLOCK` flag of a descriptor fiforx had to change (stdin shared with
/// the parent shell, when it could not be reopened).
struct RestoreFlags {
    fd: RawFd,
    flags: libc::c_int,
}

impl Drop for RestoreFlags {
    fn drop(&mut self) {
        // SAFETY: F_SETFL on a descriptor of this process; restoring the flags it had.
        unsafe { libc::fcntl(self.fd, libc::F_SETFL, self.flags) };
    }
}

/// Open the source non-blocking. `-` on an anonymous pipe (`cmd | fiforx -`) uses stdin
/// itself, with `O_NONBLOCK` set and restored afterwards: reopened by path, a pipe becomes
/// a FIFO open, which Linux 6.18 gives no `FMODE_NOWAIT`, and every read would then need
/// a probe of its own to learn that the pipe ran dry (PERF.md "FIFO receive"); the pipe's
/// read end belongs to this stage of the pipeline alone.
/// Any other stdin is reopened through `/proc/self/fd/0` (a new open file description,
/// so a terminal shared with the shell stays blocking); where that is impossible (a
/// socket) it sets `O_NONBLOCK` on stdin and restores it afterwards.
fn open_source(path: &str) -> Result<(OwnedFd, Option<RestoreFlags>), Failure> {
    let open = |p: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(p)
    };
    if path != "-" {
        return open(path)
            .map(|f| (f.into(), None))
            .map_err(|e| fail(format!("{path}: {e}")));
    }
    // An anonymous pipe reads as `pipe:[inode]`; a named FIFO as its path.
    let anonymous_pipe = std::fs::read_link("/proc/self/fd/0")
        .is_ok_and(|l| l.as_os_str().as_encoded_bytes().starts_with(b"pipe:"));
    if !anonymous_pipe {
        if let Ok(f) = open("/proc/self/fd/0") {
            return Ok((f.into(), None));
        }
    }
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| fail(format!("stdin: {e}")))?;
    // SAFETY: F_GETFL takes no argument.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(fail(format!("stdin: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: F_SETFL with the current flags plus O_NONBLOCK; undone by `RestoreFlags`.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    // Restore through fd 0 itself: the flags belong to the open file description that
    // fd 0 and our duplicate share, and our duplicate is closed with the ring.
    let restore = RestoreFlags {
        fd: libc::STDIN_FILENO,
        flags,
    };
    Ok((fd, Some(restore)))
}

/// The output: a ring target, and where the next byte goes if it is seekable.
struct Output {
    target: Target,
    /// Kept to finish short writes and to leave the file position after the data.
    file: File,
    seekable: bool,
    /// Next file offset (seekable output only; an O_APPEND file counts as a stream).
    offset: u64,
    /// Writes in flight, in order, with the bytes each must write.
    writes: VecDeque<(Ticket, u64, usize)>,
}

impl Output {
    fn new(ring: &mut Ring, out: OwnedFd) -> Result<Output, Failure> {
        let mut file = File::from(out);
        let target = ring
            .register_dup(&file)
            .map_err(|e| fail(format!("output: {e}")))?;
        let info = ring
            .info(target)
            .map_err(|e| fail(format!("output: {e}")))?;
        if !info.writable {
            return Err(fail("output is not open for writing"));
        }
        // An O_APPEND file (`>> log`) takes writes at its end, in order: like a stream.
        let seekable = info.kind.is_seekable() && !info.append;
        let offset = if seekable {
            file.stream_position()
                .map_err(|e| fail(format!("output: {e}")))?
        } else {
            0
        };
        Ok(Output {
            target,
            file,
            seekable,
            offset,
            writes: VecDeque::with_capacity(SLOTS),
        })
    }

    /// Send a received buffer to the output (the same pooled memory; no copy). A stream
    /// (pipe, tty, socket) takes one write at a time, so that a short write is finished
    /// before the next buffer's bytes go out; the next receive overlaps it all the same.
    fn write(&mut self, ring: &mut Ring, buf: PoolBuf) -> Result<(), Failure> {
        if !self.seekable {
            while self.finish_one(ring)? {}
        }
        let n = buf.len();
        let at = self.offset;
        let op = if self.seekable {
            Op::write(self.target, at, buf)
        } else {
            // At the file position (streams ignore it; an O_APPEND file appends).
            Op::write_cursor(self.target, buf)
        };
        let tk = ring.submit(op).ticket();
        self.writes.push_back((tk, at, n));
        if self.seekable {
            self.offset += n as u64;
        }
        Ok(())
    }

    /// Wait for the oldest write; finish it by hand if it was short.
    fn finish_one(&mut self, ring: &mut Ring) -> Result<bool, Failure> {
        let Some((tk, at, want)) = self.writes.pop_front() else {
            return Ok(false);
        };
        let c = ring.wait(tk).map_err(|e| fail(format!("ring: {e}")))?;
        let done = c
            .result()
            .map_err(|e| fail(format!("writing output: {e}")))?;
        if done < want {
            let buf = c
                .into_buf()
                .ok_or_else(|| fail("write completion without its buffer"))?;
            let rest = &buf.data()[done..];
            let r = if self.seekable {
                self.file.write_all_at(rest, at + done as u64)
            } else {
                std::io::Write::write_all(&mut &self.file, rest)
            };
            r.map_err(|e| fail(format!("writing output: {e}")))?;
        }
        Ok(true)
    }

    fn finish_all(&mut self, ring: &mut Ring) -> Result<(), Failure> {
        while self.finish_one(ring)? {}
        if self.seekable {
            // Leave the shared file position after the data, as write(2) would.
            let _ = self.file.seek(SeekFrom::Start(self.offset));
        }
        Ok(())
    }
}

/// The whole tool, testable: parse `args`, receive, write to `out`. The summary on
/// success; a message and exit status on failure.
fn run(args: &Args, out: OwnedFd) -> Result<Summary, Failure> {
    let (len, path) = (args.len, args.path.as_str());
    let (src, _restore) = open_source(path)?;
    let mut ring = Ring::builder()
        .entries(64)
        .build()
        .map_err(|e| fail(format!("io_uring: {e}")))?;
    let source = ring
        .register(src)
        .map_err(|e| fail(format!("{path}: {e}")))?;
    let kind = ring
        .info(source)
        .map_err(|e| fail(format!("{path}: {e}")))?
        .kind;
    let mut rx = match FifoReceiver::new(&ring, source) {
        Ok(rx) => rx,
        Err(e) => {
            let what = match kind {
                FdKind::File => "a regular file",
                FdKind::BlockDevice => "a block device",
                FdKind::Other => "neither a pipe, FIFO, socket, tty nor character device",
                _ => return Err(fail(format!("{path}: {e}"))),
            };
            return Err(fail(format!(
                "{path} is {what}, not FIFO-like (pipe, FIFO, socket, tty or character device)"
            )));
        }
    };
    let mut output = Output::new(&mut ring, out)?;
    let slot = CHUNK.min(usize::try_from(len).unwrap_or(CHUNK));
    let pool = BufferPool::builder()
        .slots(SLOTS)
        .slot_len(slot)
        .build()
        .map_err(|e| fail(format!("buffer pool: {e}")))?;
    ring.register_pool(&pool);

    // A named FIFO nobody has opened for writing yet reads as end of file. Wait for a
    // writer first: a readiness poll fires when one writes (or opens and closes).
    let mut waited_for_writer = false;
    if kind == FdKind::Pipe && path != "-" {
        let probe = ring
            .submit(Op::poll(source, libc::POLLIN as u32).deadline(Duration::ZERO))
            .wait()
            .map_err(|e| fail(format!("ring: {e}")))?;
        if probe.result().is_err() {
            waited_for_writer = true;
            ring.submit(Op::poll(source, libc::POLLIN as u32))
                .wait()
                .map_err(|e| fail(format!("ring: {e}")))?
                .result()
                .map_err(|e| fail(format!("{path}: {e}")))?;
        }
    }

    let started = Instant::now();
    let bar = cli::progress(len);
    let mut got: u64 = 0;
    let mut ended_early = None;
    while got < len {
        let want = usize::try_from(len - got).unwrap_or(usize::MAX).min(slot);
        let buf = loop {
            match pool.try_get() {
                Ok(b) => break b,
                Err(_) => {
                    output.finish_one(&mut ring)?;
                }
            }
        };
        rx.receive(&mut ring, buf, want)
            .map_err(|e| fail(format!("{path}: {e}")))?;
        let done = rx.run(&mut ring).map_err(|e| fail(format!("ring: {e}")))?;
        let status = done.status();
        got += done.bytes() as u64;
        bar.set_position(got);
        if !done.buf.is_empty() {
            output.write(&mut ring, done.buf)?;
        }
        match status {
            FifoStatus::Full => {}
            FifoStatus::Eof | FifoStatus::HangUp => {
                ended_early = Some(status);
                break;
            }
            FifoStatus::Failed(e) => return Err(fail(format!("{path}: {e}"))),
            other => return Err(fail(format!("{path}: receive ended: {other:?}"))),
        }
    }
    output.finish_all(&mut ring)?;
    bar.finish_and_clear();
    drop(output);
    let summary = Summary {
        bytes: got,
        readiness_waits: rx.readiness_waits(),
        receives: rx.transactions(),
        waited_for_writer,
        nowait_reads: rx.uses_nowait_reads(),
        elapsed: started.elapsed(),
    };
    drop(rx);
    ring.run_until_idle()
        .map_err(|e| fail(format!("ring: {e}")))?;
    // Teardown invariants: every operation completed once, every buffer back.
    let (stats, slots) = (ring.stats(), pool.stats());
    if stats.submitted != stats.completed || ring.pending() != 0 || slots.free != slots.total {
        return Err(fail(format!(
            "internal error: ring {stats:?}, pool {slots:?} not back to rest"
        )));
    }
    if let Some(status) = ended_early {
        let how = if status == FifoStatus::HangUp {
            "hung up"
        } else {
            "ended"
        };
        return Err(fail(format!(
            "{path}: source {how} after {got} of {len} bytes (those {got} were written)"
        )));
    }
    Ok(summary)
}

fn main() {
    let args = Args::parse();
    // SAFETY: fd 1 is this process's stdout; `dup` gives a new descriptor we own.
    let out = unsafe { libc::dup(1) };
    if out < 0 {
        eprintln!("fiforx: stdout: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    // SAFETY: `out` was just returned by dup and is owned by nobody else.
    let out = unsafe { OwnedFd::from_raw_fd(out) };
    match run(&args, out) {
        Ok(summary) => eprintln!("fiforx: {summary}"),
        Err(f) => {
            eprintln!("fiforx: {}", f.message);
            std::process::exit(1);
        }
    }
}
