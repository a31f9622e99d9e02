//! [`ContinuousReader`]: the [`ReaderMachine`] driven on a [`Ring`].
//!
//! The machine decides; this module executes. Each [`ReaderAction`] becomes a ring
//! operation (a positional or stream read into a pool slot, a multishot read from a
//! provided-buffer ring, a readiness poll, a cancel) or a call of the user's handlers, and
//! each completion goes back to the machine as a [`ReaderEvent`]. Every operation the
//! reader submits is delivered to the reader's own [`CompletionQueue`], tagged with the
//! machine's [`Seq`], so completions of other operations on the same ring are untouched.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::buf::{BufferPool, PoolBuf};
use crate::error::{Error, ErrorKind, Result};
use crate::queue::CompletionQueue;
use crate::request::Completion;
use crate::ring::{BufRingLease, FdKind, Op, OpId, Ring, RingHandle, Target};
use crate::waiters::SleepFlag;

use super::machine::{
    FinishReason, ReaderAction, ReaderConfig, ReaderEvent, ReaderMachine, ReaderStats, Restart, Seq,
};

/// Where `on_read` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// On the thread that drives the ring, inside [`ContinuousReader::drive`]. Calls never
    /// overlap. The default.
    Inline,
    /// On this many worker threads owned by the reader. Deliveries go through a
    /// [`CompletionQueue`] that the workers consume; each worker calls `on_read` and then
    /// acknowledges the delivery to the machine ([`ReaderEvent::Delivered`]). `on_read`
    /// may run on several workers at once; `on_failed` still runs only once every
    /// delivery is acknowledged, on the driving thread.
    Workers(usize),
}

/// How a stream source (pipe, FIFO, socket, tty) is read.
///
/// A multishot read works only on a file that can be read without blocking
/// (`FMODE_NOWAIT`): on any other, io_uring emulates that with the file's poll state, and
/// at end of file — poll says "hung up", not "readable" — the multishot read stays armed
/// forever instead of completing with 0 (Linux 6.18). Sockets and `pipe(2)` pipes can;
/// a named FIFO, or a pipe reopened by path (`/dev/stdin`, `/proc/self/fd/N`), cannot,
/// nor can ttys. So the first read of a pipe, tty or character device is a single-shot
/// read with `RWF_NOWAIT`, which the kernel refuses (`EOPNOTSUPP`, nothing read) exactly
/// on those files: the reader then keeps to single-shot reads; otherwise it switches to
/// multishot from the next read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamReads {
    /// Multishot when the ring has `IORING_OP_READ_MULTISHOT` and provided-buffer rings
    /// and the source is a pipe, FIFO or socket that can be read without blocking (see
    /// above); single-shot reads otherwise. The default.
    ///
    /// Ttys get single-shot reads: on Linux 6.18 a multishot read of a pty under load
    /// sometimes misses a wake-up (data stays queued until the task next enters the
    /// kernel), while a single-shot read re-polls the tty each time it is armed.
    Auto,
    /// Always one single-shot read at a time (an `O_NONBLOCK` source then answers
    /// `EAGAIN` when empty, and the reader waits with a readiness poll).
    SingleShot,
    /// Multishot whenever the source allows it (single-shot reads for a file that cannot
    /// be read without blocking, see above); [`ErrorKind::Unsupported`] at build when
    /// the ring cannot, [`ErrorKind::OutOfRange`] when the pool has more than 65536
    /// slots (provided-buffer ids are 16 bits; `Auto` reads such a pool single-shot).
    Multishot,
}

/// How a reader ended, with its counters. Returned once by
/// [`ContinuousReader::drive`] / [`ContinuousReader::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderReport {
    /// Why the reader finished. [`FinishReason::Failed`] carries the error `on_failed`
    /// declined to restart after.
    pub reason: FinishReason,
    /// Bytes handed to `on_read`.
    pub bytes: u64,
    /// `on_read` calls.
    pub deliveries: u64,
    /// `on_failed` calls.
    pub failures: u64,
    /// Restarts (`on_failed` answered [`Restart::Yes`]).
    pub restarts: u64,
    /// Reads (and multishot arms) submitted.
    pub reads_issued: u64,
    /// Readiness polls after `EAGAIN` (non-blocking streams).
    pub readiness_waits: u64,
    /// Multishot reads that ended with `ENOBUFS` (the provided-buffer ring ran dry) and
    /// were re-armed once buffers were back.
    pub enobufs: u64,
    /// Submissions held back because no pool slot (or no provided buffer) was free.
    pub buffer_waits: u64,
    /// Whether stream reads used multishot (false when the source turned out not to
    /// allow it, see [`StreamReads`]).
    pub multishot: bool,
}

/// Stops a [`ContinuousReader`] from any thread (including from inside `on_read`).
///
/// Cheap to clone. Stopping cancels the reads in flight; the reader finishes with
/// [`FinishReason::Stopped`] once every completion is back. Stopping a finished reader
/// does nothing.
#[derive(Clone)]
pub struct StopHandle {
    signal: Arc<Signal>,
}

impl fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopHandle")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl StopHandle {
    /// Ask the reader to stop.
    pub fn stop(&self) {
        // Release: pairs with the Acquire load in the driver, so what this thread did
        // before asking is visible to the driver when it acts on the request.
        self.signal.stop.store(true, Ordering::Release);
        self.signal.wake_driver();
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        // Relaxed: a snapshot for the caller.
        self.signal.stop.load(Ordering::Relaxed)
    }
}

/// What the driver, its workers and stop handles share.
#[derive(Debug)]
struct Signal {
    /// A stop was requested (by a `StopHandle` or `ContinuousReader::stop`).
    stop: AtomicBool,
    /// The driver is about to block in the ring (or is blocked there). Whoever hands it
    /// work from another thread (an acknowledgement, a stop) and finds this set wakes the
    /// ring. See `ContinuousReader::wait` for the handshake.
    sleeping: SleepFlag,
    /// The reader's ring, for waking it: the ring keeps a poll armed on its wake-up
    /// eventfd, which ends a wait in `io_uring_enter`. Set at build.
    ring: OnceLock<RingHandle>,
}

impl Signal {
    /// Wake the driver if it sleeps (or is about to). Called after publishing the work.
    fn wake_driver(&self) {
        // The other half of the handshake in `ContinuousReader::wait` (`SleepFlag`).
        if self.sleeping.must_wake() {
            if let Some(ring) = self.ring.get() {
                ring.wake();
            }
        }
    }
}

/// The user's context and `on_read`, shared with the worker threads.
struct Callbacks<C, R> {
    ctx: C,
    on_read: R,
}

/// One delivery handed to a worker thread.
enum Work {
    Read { seq: Seq, offset: u64, buf: PoolBuf },
    Exit,
}

/// The worker threads of [`Dispatch::Workers`].
struct Workers {
    work: Arc<CompletionQueue<Work>>,
    /// Acknowledgements (the delivery's `Seq`), pushed after `on_read` returned.
    acks: Arc<CompletionQueue<Seq>>,
    threads: Vec<JoinHandle<()>>,
    /// The first panic raised by `on_read` on a worker, re-raised by the driver once the
    /// reader has wound down.
    panic: Arc<Mutex<Option<Box<dyn Any + Send>>>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl Workers {
    /// Send every worker an `Exit` and join them (after the deliveries queued before it).
    /// Idempotent.
    fn shut_down(&mut self) {
        for _ in 0..self.threads.len() {
            // The queue has room for one `Exit` per worker beyond every possible delivery;
            // wait while workers drain it anyway.
            self.work.push_wait(Work::Exit);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Tag layout: the kind of operation in the top two bits, the machine's `Seq` below.
const KIND_SHIFT: u32 = 62;
const SEQ_MASK: u64 = (1 << KIND_SHIFT) - 1;
const KIND_READ: u64 = 0;
const KIND_MULTISHOT: u64 = 1;
const KIND_POLL: u64 = 2;

fn tag(kind: u64, seq: Seq) -> u64 {
    (kind << KIND_SHIFT) | (seq.get() & SEQ_MASK)
}

/// How long to wait before re-checking for free slots when a submission waits for one
/// (slots return to the pool from any thread without notifying the ring).
const BUFFER_RECHECK: Duration = Duration::from_millis(1);

/// The longest single wait in the kernel. A completion the kernel fails to signal (seen on
/// Linux 6.18 with multishot reads of a pty under load: the wake-up work stays queued on
/// the task until its next `io_uring_enter`) then costs at most this much latency, never
/// a hang.
const KERNEL_RECHECK: Duration = Duration::from_millis(250);

/// Builder of a [`ContinuousReader`]; from [`ContinuousReader::builder`].
#[derive(Debug)]
pub struct ContinuousReaderBuilder {
    target: Target,
    pool: BufferPool,
    pending_reads: u32,
    transfer_len: Option<u32>,
    start: u64,
    end: Option<u64>,
    ordered: bool,
    reorder_window: Option<u32>,
    max_unacked: Option<u32>,
    dispatch: Dispatch,
    stream_reads: StreamReads,
    signal: Arc<Signal>,
}

impl ContinuousReaderBuilder {
    /// Reads kept in flight for a file or block device (default 2). Streams keep one.
    pub fn pending_reads(mut self, n: u32) -> Self {
        self.pending_reads = n;
        self
    }

    /// Bytes per read (default: the pool's slot capacity; not 0). With direct I/O it must
    /// be a multiple of the target's alignment. Multishot stream reads fill up to a whole
    /// slot, and so do the reads of a stream chosen for multishot that turns out not to
    /// allow it (see [`StreamReads`]).
    pub fn transfer_len(mut self, len: u32) -> Self {
        self.transfer_len = Some(len);
        self
    }

    /// Read only `[start, end)` (files and block devices).
    pub fn range(mut self, start: u64, end: u64) -> Self {
        self.start = start;
        self.end = Some(end);
        self
    }

    /// Start at `offset` and read to the end of the file (files and block devices).
    pub fn start_at(mut self, offset: u64) -> Self {
        self.start = offset;
        self.end = None;
        self
    }

    /// Deliver in file order (a bounded reorder window) instead of completion order.
    /// Default off. Streams are always in order. With [`Dispatch::Workers`], deliveries
    /// are handed out in order but `on_read` calls on different workers may overlap.
    pub fn ordered(mut self, on: bool) -> Self {
        self.ordered = on;
        self
    }

    /// Ordered mode: most reads in flight or held back (default: `2 * pending_reads`,
    /// capped at the pool's slots minus one, at least `pending_reads`). Must be below the
    /// pool's slot count.
    pub fn reorder_window(mut self, reads: u32) -> Self {
        self.reorder_window = Some(reads);
        self
    }

    /// Most deliveries awaiting acknowledgement before the reader holds back new reads
    /// (default [`ReaderConfig::DEFAULT_MAX_UNACKED`]; matters with workers).
    pub fn max_unacked(mut self, n: u32) -> Self {
        self.max_unacked = Some(n);
        self
    }

    /// Where `on_read` runs (default [`Dispatch::Inline`]). At most as many workers as
    /// the pool has slots (each delivery holds one, so more could never all be busy).
    pub fn dispatch(mut self, d: Dispatch) -> Self {
        self.dispatch = d;
        self
    }

    /// How streams are read (default [`StreamReads::Auto`]).
    pub fn stream_reads(mut self, s: StreamReads) -> Self {
        self.stream_reads = s;
        self
    }

    /// A handle that stops the reader once built (put it in the context to stop from
    /// `on_read`, or hand it to another thread).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            signal: self.signal.clone(),
        }
    }

    /// Check the configuration against the target, the pool and the ring, and start
    /// reading: the first reads are queued on `ring` (submitted when it is next driven).
    ///
    /// Typed errors, before anything reaches the kernel: a target not open for reading
    /// ([`ErrorKind::NotReadable`]), of an unsupported kind or given a byte range it cannot
    /// take ([`ErrorKind::WrongTargetKind`]), not registered ([`ErrorKind::StaleTarget`]),
    /// a zero transfer length ([`ErrorKind::ZeroLength`]), or one over the slot capacity
    /// ([`ErrorKind::BufferTooSmall`]), direct I/O settings that do not fit the target's
    /// alignment ([`ErrorKind::Misaligned`]), a pool with fewer slots than the reads, the
    /// reorder window or the workers need ([`ErrorKind::PoolTooSmall`]), zero workers
    /// ([`ErrorKind::OutOfRange`]), multishot requested on a ring without it
    /// ([`ErrorKind::Unsupported`]) or with a pool of more than 65536 slots
    /// ([`ErrorKind::OutOfRange`]); the machine's configuration errors
    /// ([`ReaderConfig::validate`](crate::reader::ReaderConfig::validate)).
    pub fn build<C, R, F>(
        self,
        ring: &mut Ring,
        ctx: C,
        on_read: R,
        on_failed: F,
    ) -> Result<ContinuousReader<C, R, F>>
    where
        C: Send + Sync + 'static,
        R: Fn(&C, PoolBuf, u64) + Send + Sync + 'static,
        F: FnMut(&C, &Error) -> Restart,
    {
        let info = ring.info(self.target)?;
        if !info.readable {
            return Err(Error::new(ErrorKind::NotReadable));
        }
        let g = self.pool.geometry();
        let capacity = u32::try_from(g.capacity.min(i32::MAX as usize)).unwrap_or(u32::MAX);
        let transfer_len = self.transfer_len.unwrap_or(capacity);
        if transfer_len == 0 {
            return Err(Error::zero_length("read (transfer_len)"));
        }
        if transfer_len as usize > g.capacity {
            return Err(Error::new(ErrorKind::BufferTooSmall {
                need: u64::from(transfer_len),
                have: g.capacity as u64,
            }));
        }
        match self.dispatch {
            Dispatch::Workers(0) => {
                return Err(Error::out_of_range("Dispatch::Workers", 1, g.slots as u64))
            }
            Dispatch::Workers(n) if n > g.slots => {
                return Err(Error::new(ErrorKind::PoolTooSmall {
                    what: "Dispatch::Workers",
                    need: u32::try_from(n).unwrap_or(u32::MAX),
                    have: g.slots as u32,
                }))
            }
            _ => {}
        }
        let caps = *ring.capabilities();
        let mut multishot = false;
        let mut probing = false;
        let mut cfg = if info.kind.is_seekable() {
            let align = if info.direct { info.offset_align } else { 1 };
            if info.direct && g.align < info.mem_align as usize {
                return Err(Error::new(ErrorKind::Misaligned {
                    what: "buffer",
                    value: g.align as u64,
                    align: info.mem_align,
                }));
            }
            if (g.slots as u64) < u64::from(self.pending_reads) + u64::from(self.ordered) {
                return Err(Error::new(ErrorKind::PoolTooSmall {
                    what: "pending_reads (plus one when ordered)",
                    need: self.pending_reads.saturating_add(u32::from(self.ordered)),
                    have: g.slots as u32,
                }));
            }
            let mut cfg = ReaderConfig::positional(transfer_len)
                .align(align)
                .pending_reads(self.pending_reads)
                .ordered(self.ordered);
            cfg = match self.end {
                Some(end) => cfg.range(self.start, end),
                None => cfg.start_at(self.start),
            };
            if self.ordered {
                let room = u32::try_from(g.slots - 1).unwrap_or(u32::MAX);
                let window = self.reorder_window.unwrap_or_else(|| {
                    self.pending_reads
                        .saturating_mul(2)
                        .min(room)
                        .max(self.pending_reads)
                });
                // Reads held back for ordering keep their slots: a window the pool cannot
                // cover, plus one slot for the read that unblocks it, could deadlock.
                if window > room {
                    return Err(Error::new(ErrorKind::PoolTooSmall {
                        what: "reorder_window (plus one)",
                        need: window.saturating_add(1),
                        have: g.slots as u32,
                    }));
                }
                cfg = cfg.reorder_window(window);
            }
            cfg
        } else if info.kind.is_stream() {
            if self.start != 0 || self.end.is_some() {
                return Err(Error::wrong_kind(
                    "a file or block device (for a byte range)",
                    info.kind,
                ));
            }
            let can = caps.read_multishot && caps.buf_ring;
            // Provided-buffer ids are 16 bits: a larger pool cannot back a buffer ring.
            let fits = g.slots <= 1 << 16;
            // Multishot needs a pollable file (other character devices may not be), and
            // misses wake-ups on ttys (see `StreamReads::Auto`).
            let suits = matches!(info.kind, FdKind::Pipe | FdKind::Socket);
            multishot = match self.stream_reads {
                StreamReads::Auto => can && fits && suits,
                StreamReads::SingleShot => false,
                StreamReads::Multishot if !can => {
                    return Err(Error::unsupported("IORING_OP_READ_MULTISHOT (Linux 6.7)"))
                }
                StreamReads::Multishot if !fits => {
                    return Err(Error::out_of_range(
                        "slots of a multishot reader's pool",
                        1,
                        1 << 16,
                    ))
                }
                StreamReads::Multishot => true,
            };
            // Sockets are always read without blocking; other streams prove it first (see
            // `StreamReads`): the machine starts single-shot, the driver switches it.
            probing = multishot && info.kind != FdKind::Socket;
            // A multishot read fills whole provided buffers.
            let len = if multishot { capacity } else { transfer_len };
            ReaderConfig::stream(len).multishot(multishot && !probing)
        } else {
            return Err(Error::wrong_kind(
                "a file, block device, pipe, FIFO, socket or tty",
                info.kind,
            ));
        };
        if let Some(n) = self.max_unacked {
            cfg = cfg.max_unacked(n);
        }
        let machine = ReaderMachine::new(cfg)?;

        // The provided-buffer ring is registered at the first multishot read. It offers at
        // most half the pool (the largest power of two not above it): offered slots stay
        // with the kernel until data comes, and the other half serves the deliveries in
        // the user's hands and other readers of the same pool.
        let half = (g.slots / 2).clamp(1, 32768);
        let buf_ring_entries = 1u16 << (usize::BITS - 1 - half.leading_zeros());
        // Other threads (workers' acknowledgements, stop handles) wake a driver blocked in
        // the ring through the ring's own wake-up poll. `ring` is set once, here; the
        // stop handle given out earlier shares `signal`.
        let _ = self.signal.ring.set(ring.handle()?);

        let pending = cfg.effective_pending_reads() as usize;
        let events = Arc::new(CompletionQueue::new(g.slots + pending + 8));
        let callbacks = Arc::new(Callbacks { ctx, on_read });
        let workers = match self.dispatch {
            Dispatch::Inline => None,
            Dispatch::Workers(n) => Some(spawn_workers(n, g.slots, &callbacks, &self.signal)?),
        };
        let window = (cfg.effective_reorder_window() as usize).max(pending);
        Ok(ContinuousReader {
            target: self.target,
            pool: self.pool,
            events,
            ops: HashMap::with_capacity(pending + 4),
            filled: HashMap::with_capacity(window + pending + 4),
            provided: if multishot {
                (0..g.slots).map(|_| None).collect()
            } else {
                Vec::new()
            },
            deferred: VecDeque::with_capacity(pending + 4),
            buf_ring: None,
            buf_ring_entries,
            probing,
            signal: self.signal,
            stop_applied: false,
            report: None,
            typed_error: None,
            enobufs: 0,
            buffer_waits: 0,
            workers,
            callbacks,
            on_failed,
            multishot,
            machine,
        })
    }
}

fn spawn_workers<C, R>(
    n: usize,
    slots: usize,
    callbacks: &Arc<Callbacks<C, R>>,
    signal: &Arc<Signal>,
) -> Result<Workers>
where
    C: Send + Sync + 'static,
    R: Fn(&C, PoolBuf, u64) + Send + Sync + 'static,
{
    // Every queued delivery owns a distinct pool slot, so `slots` bounds the work queue;
    // plus one `Exit` per worker. Acknowledgements: at most one per delivery not yet seen
    // by the driver; twice the slots leaves room, and a full queue only makes a worker
    // yield until the driver drains it.
    let mut w = Workers {
        work: Arc::new(CompletionQueue::new(slots + n)),
        acks: Arc::new(CompletionQueue::new(2 * slots + 64)),
        threads: Vec::with_capacity(n),
        panic: Arc::new(Mutex::new(None)),
    };
    for i in 0..n {
        let work = w.work.clone();
        let acks = w.acks.clone();
        let panic = w.panic.clone();
        let cb = callbacks.clone();
        let signal = signal.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("iocomplete-reader-{i}"))
            .spawn(move || worker_loop(&work, &acks, &panic, &cb, &signal));
        match spawned {
            Ok(t) => w.threads.push(t),
            Err(e) => {
                w.shut_down();
                return Err(Error::from_io(&e));
            }
        }
    }
    Ok(w)
}

fn worker_loop<C, R>(
    work: &CompletionQueue<Work>,
    acks: &CompletionQueue<Seq>,
    panic: &Mutex<Option<Box<dyn Any + Send>>>,
    cb: &Callbacks<C, R>,
    signal: &Signal,
) where
    R: Fn(&C, PoolBuf, u64),
{
    loop {
        let (seq, offset, buf) = match work.pop_wait() {
            Work::Exit => return,
            Work::Read { seq, offset, buf } => (seq, offset, buf),
        };
        let r = catch_unwind(AssertUnwindSafe(|| (cb.on_read)(&cb.ctx, buf, offset)));
        if let Err(p) = r {
            let mut slot = panic.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(p);
            // Release: as `StopHandle::stop`.
            signal.stop.store(true, Ordering::Release);
        }
        // The acknowledgement is published after `on_read` returned. The queue's push
        // (Release) and the driver's pop (Acquire) order everything `on_read` did before
        // whatever the driver does next — in particular before `on_failed`.
        if let Err(ack) = acks.push(seq) {
            // Full: the driver drains acknowledgements once woken; wait for room.
            signal.wake_driver();
            acks.push_wait(ack);
        }
        signal.wake_driver();
    }
}

/// A continuous reader: keeps `pending_reads` reads in flight on one source and hands
/// every filled buffer to `on_read`, re-arming at once, until stopped, end of file or end
/// of range; on error, drains what is in flight and asks `on_failed` whether to restart.
///
/// The sans-I/O [`ReaderMachine`] holds the logic; this type executes it on a [`Ring`].
///
/// # Handlers
///
/// * `on_read(&ctx, buf, offset)` — `buf` holds the bytes read at `offset` (the file
///   offset for files and block devices; for streams, the bytes delivered before it).
///   `buf.len()` counts the data only; the pool's header room sits in front of it
///   (`buf.header()`, `buf.frame()`), untouched by the kernel. Dropping `buf` returns the
///   slot at once; keeping it (or [`share`](PoolBuf::share)-ing it) extends its life — a
///   reader then waits for slots when the pool runs dry.
/// * `on_failed(&ctx, &error) -> Restart` — after a read failed and every read still in
///   flight has come back (those before the failure delivered, those after it dropped).
///   [`Restart::Yes`] re-arms from where delivery stopped: nothing is delivered twice or
///   skipped. [`Restart::No`] ends the reader with [`FinishReason::Failed`].
///
/// # Synchronization (the continuous-reader rules)
///
/// * For one reader, `on_failed` never runs at the same time as `on_read`: the machine
///   emits the failure only after every delivery has been acknowledged, and a delivery is
///   acknowledged only after `on_read` returned (on whichever thread it ran). Everything
///   `on_read` did happens-before `on_failed` starts.
/// * With [`Dispatch::Workers`] and more than one pending read, `on_read` can run again
///   (on another worker) before an earlier call returned. With [`Dispatch::Inline`] it
///   never overlaps itself.
/// * Different readers are not synchronized with each other, and nothing else is.
///
/// # Driving
///
/// The thread that owns the ring drives the reader: [`run`](Self::run) until it
/// finishes, or [`drive`](Self::drive) step by step to interleave other work on the same
/// ring (each step waits for one batch of completions). A stop or an acknowledgement from
/// another thread wakes a driver blocked in the ring through the ring's own wake-up poll
/// ([`RingHandle::wake`]).
/// [`stop`](Self::stop) / [`StopHandle::stop`] cancel what is in flight; the reader
/// finishes once every completion is back, with no slot leaked.
///
/// Sources: files and block devices are read at advancing offsets, `pending_reads` at a
/// time; `O_DIRECT` targets use their alignment (statx `DIOALIGN`, or the device's
/// logical block size). Streams keep one read in flight: multishot from a provided-buffer
/// ring when the ring and the source support it (re-armed after `ENOBUFS` once slots are
/// back; see [`StreamReads`]), or single-shot reads; a non-blocking stream's `EAGAIN`
/// turns into a readiness poll. Readers of one pool share it fairly: a multishot reader's
/// buffer ring offers at most half the pool's slots, and the ring refills the buffer rings
/// of one pool in turn, each up to its share.
///
/// Dropping an unfinished reader abandons it: the ring is asked to cancel its operations
/// and retire its buffer ring, and gets every slot back once the kernel has returned them
/// (drive the ring, e.g. [`Ring::run_until_idle`]). Deliveries queued for workers still
/// reach `on_read`; nothing else does.
///
/// ```
/// use iocomplete::{BufferPool, ContinuousReader, Restart, Ring};
/// use std::sync::Mutex;
///
/// let mut f = tempfile::tempfile().unwrap();
/// std::io::Write::write_all(&mut f, &[42u8; 100_000]).unwrap();
/// let mut ring = Ring::new()?;
/// let pool = BufferPool::builder().slots(8).slot_len(16 * 1024).header_len(8).build()?;
/// let file = ring.register(f)?;
///
/// let reader = ContinuousReader::builder(file, &pool)
///     .pending_reads(4)
///     .ordered(true)
///     .build(
///         &mut ring,
///         Mutex::new(Vec::new()),
///         |out: &Mutex<Vec<u8>>, buf, _offset| out.lock().unwrap().extend_from_slice(buf.data()),
///         |_, _| Restart::No,
///     )?;
/// let (report, out) = reader.run_into_ctx(&mut ring)?;
/// assert_eq!(report.bytes, 100_000);
/// assert_eq!(out.into_inner().unwrap(), vec![42u8; 100_000]);
/// assert_eq!(pool.stats().free, 8);
/// # Ok::<(), iocomplete::Error>(())
/// ```
pub struct ContinuousReader<C, R, F> {
    machine: ReaderMachine,
    target: Target,
    pool: BufferPool,
    /// Completions of every operation this reader submitted.
    events: Arc<CompletionQueue<Completion>>,
    /// Operations in the ring, by `Seq` (to cancel them).
    ops: HashMap<u64, OpId>,
    /// Completed single-shot reads whose buffer awaits `Deliver` or `Discard`.
    filled: HashMap<u64, PoolBuf>,
    /// Multishot: provided buffers handed out by completions, by buffer id (= slot).
    provided: Vec<Option<PoolBuf>>,
    /// Submissions waiting for a free slot (or provided buffer), in issue order.
    deferred: VecDeque<ReaderAction>,
    /// The provided-buffer ring of multishot reads, from the first one on. Dropping the
    /// lease (with an unfinished reader) retires it.
    buf_ring: Option<BufRingLease>,
    /// Its size.
    buf_ring_entries: u16,
    /// Multishot is wanted, but the source must first show that it can be read without
    /// blocking: the next stream read carries `RWF_NOWAIT` (see [`StreamReads`]).
    probing: bool,
    signal: Arc<Signal>,
    stop_applied: bool,
    report: Option<ReaderReport>,
    /// A failure the ring reported with a typed error (no errno); the machine only carries
    /// errnos, so it is substituted back when the failure surfaces.
    typed_error: Option<Error>,
    enobufs: u64,
    buffer_waits: u64,
    workers: Option<Workers>,
    callbacks: Arc<Callbacks<C, R>>,
    on_failed: F,
    multishot: bool,
}

impl<C, R, F> fmt::Debug for ContinuousReader<C, R, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContinuousReader")
            .field("target", &self.target)
            .field("finished", &self.report.is_some())
            .field("in_flight", &self.machine.in_flight())
            .field("unacked", &self.machine.unacked())
            .field("deferred", &self.deferred.len())
            .field("multishot", &self.multishot)
            .field("stats", &self.machine.stats())
            .finish_non_exhaustive()
    }
}

impl ContinuousReader<(), (), ()> {
    /// A builder for a reader of `target` (registered on the ring the reader will be
    /// built on) into slots of `pool` (its header and trailer room come with every
    /// buffer).
    pub fn builder(target: Target, pool: &BufferPool) -> ContinuousReaderBuilder {
        ContinuousReaderBuilder {
            target,
            pool: pool.clone(),
            pending_reads: ReaderConfig::DEFAULT_PENDING_READS,
            transfer_len: None,
            start: 0,
            end: None,
            ordered: false,
            reorder_window: None,
            max_unacked: None,
            dispatch: Dispatch::Inline,
            stream_reads: StreamReads::Auto,
            signal: Arc::new(Signal {
                stop: AtomicBool::new(false),
                sleeping: SleepFlag::default(),
                ring: OnceLock::new(),
            }),
        }
    }
}

impl<C, R, F> ContinuousReader<C, R, F>
where
    C: Send + Sync + 'static,
    R: Fn(&C, PoolBuf, u64) + Send + Sync + 'static,
    F: FnMut(&C, &Error) -> Restart,
{
    /// The user context.
    pub fn ctx(&self) -> &C {
        &self.callbacks.ctx
    }

    /// A handle that stops this reader from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            signal: self.signal.clone(),
        }
    }

    /// Stop: cancel the reads in flight and finish with [`FinishReason::Stopped`] once
    /// every completion is back (keep driving until then).
    pub fn stop(&self) {
        self.stop_handle().stop();
    }

    /// The machine's counters so far.
    pub fn stats(&self) -> ReaderStats {
        self.machine.stats()
    }

    /// Whether the reader uses multishot stream reads (or will, once its first read shows
    /// that the source allows them; see [`StreamReads`]).
    pub fn is_multishot(&self) -> bool {
        self.multishot
    }

    /// The report, once the reader has finished.
    pub fn report(&self) -> Option<ReaderReport> {
        self.report
    }

    /// Drive the reader until it finishes; returns its report. `Err` only when the ring
    /// itself fails (the reader's own failures end up in [`ReaderReport::reason`]).
    pub fn run(mut self, ring: &mut Ring) -> Result<ReaderReport> {
        self.run_mut(ring)
    }

    /// Like [`run`](Self::run), also giving the context back.
    pub fn run_into_ctx(mut self, ring: &mut Ring) -> Result<(ReaderReport, C)> {
        let report = self.run_mut(ring)?;
        let callbacks = self.callbacks.clone();
        // The workers (the context's only other holders) were joined when the reader
        // finished; dropping the reader is a formality.
        drop(self);
        match Arc::try_unwrap(callbacks) {
            Ok(cb) => Ok((report, cb.ctx)),
            Err(_) => Err(Error::invalid("reader context still shared")),
        }
    }

    fn run_mut(&mut self, ring: &mut Ring) -> Result<ReaderReport> {
        loop {
            if let Some(r) = self.drive(ring, None)? {
                return Ok(r);
            }
        }
    }

    /// One step: process what has completed, wait (up to `timeout`; `None`: until
    /// something completes, re-checking at least every 250 ms) for more, process that.
    /// Returns the report once the reader has finished (and on every later call).
    /// Completions of other operations on the same ring are routed as usual while it
    /// waits.
    ///
    /// A panic raised by `on_read` on a worker thread stops the reader; once it has wound
    /// down (nothing in flight, no slot leaked) the panic is resumed here, on the driving
    /// thread, as `std::thread::scope` does.
    ///
    /// `ring` must be the ring the reader was built on
    /// ([`ErrorKind::WrongRing`] otherwise, and nothing happens).
    pub fn drive(
        &mut self,
        ring: &mut Ring,
        timeout: Option<Duration>,
    ) -> Result<Option<ReaderReport>> {
        if !ring.owns(self.target) {
            return Err(Error::new(ErrorKind::WrongRing { what: "reader" }));
        }
        if let Some(r) = self.report {
            return Ok(Some(r));
        }
        self.pump(ring)?;
        if self.report.is_none() {
            self.wait(ring, timeout)?;
            self.pump(ring)?;
        }
        if self.report.is_some() {
            self.rethrow_worker_panic();
        }
        Ok(self.report)
    }

    /// Process everything available without waiting.
    fn pump(&mut self, ring: &mut Ring) -> Result<()> {
        // Acquire: pairs with the Release in `StopHandle::stop`.
        if !self.stop_applied && self.signal.stop.load(Ordering::Acquire) {
            self.stop_applied = true;
            self.machine.stop();
        }
        self.take_acks()?;
        self.take_completions()?;
        self.retry_deferred(ring)?;
        self.run_actions(ring)?;
        // Deliveries may have returned slots that deferred reads are waiting for.
        self.retry_deferred(ring)?;
        Ok(())
    }

    /// Block in the ring until a completion arrives (or `timeout`), unless another thread
    /// has already handed us work.
    fn wait(&mut self, ring: &mut Ring, timeout: Option<Duration>) -> Result<()> {
        let cap = if self.deferred.is_empty() {
            KERNEL_RECHECK
        } else {
            BUFFER_RECHECK
        };
        let timeout = Some(timeout.map_or(cap, |t| t.min(cap)));
        // Handshake with `Signal::wake_driver` (`SleepFlag`): announce the sleep, then
        // re-check for work published by other threads. Either we see it here and do not
        // block, or the publisher sees the announcement and wakes the ring, whose wake-up
        // poll ends our wait.
        self.signal.sleeping.announce();
        let has_work = self.workers.as_ref().is_some_and(|w| !w.acks.is_empty())
            || (!self.stop_applied && self.signal.stop.load(Ordering::Relaxed))
            || !self.events.is_empty();
        let r = if has_work {
            ring.poll().map(|_| ())
        } else {
            ring.run_once(timeout).map(|_| ())
        };
        self.signal.sleeping.clear();
        r
    }

    fn take_acks(&mut self) -> Result<()> {
        let Some(w) = &self.workers else {
            return Ok(());
        };
        while let Some(seq) = w.acks.pop() {
            self.machine.handle(ReaderEvent::Delivered { seq })?;
        }
        Ok(())
    }

    fn take_completions(&mut self) -> Result<()> {
        while let Some(c) = self.events.pop() {
            let kind = c.tag() >> KIND_SHIFT;
            let seq = Seq::new(c.tag() & SEQ_MASK);
            let res = self.res_of(&c);
            let more = c.has_more();
            let buf = c.into_buf();
            match kind {
                KIND_READ => {
                    self.ops.remove(&seq.get());
                    if self.probing {
                        self.probing = false;
                        if res == -libc::EOPNOTSUPP {
                            // No RWF_NOWAIT, so no multishot (see `StreamReads`); nothing
                            // was read. The same read again, without the flag.
                            self.multishot = false;
                            drop(buf);
                            let len = self.machine.config().transfer_len();
                            self.deferred.push_front(ReaderAction::Read { seq, len });
                            continue;
                        }
                        // Multishot from the next read on (this one is a normal read).
                        self.machine.set_multishot(true)?;
                    }
                    if let Some(b) = buf {
                        self.filled.insert(seq.get(), b);
                    }
                    self.machine.handle(ReaderEvent::ReadDone { seq, res })?;
                }
                KIND_MULTISHOT => {
                    if !more {
                        self.ops.remove(&seq.get());
                    }
                    if res == -libc::ENOBUFS {
                        self.enobufs += 1;
                    }
                    let buf_id =
                        match buf {
                            Some(b) => {
                                let id = b.slot();
                                let slot = self
                                    .provided
                                    .get_mut(id as usize)
                                    .ok_or(Error::invalid("provided buffer id out of range"))?;
                                *slot = Some(b);
                                Some(u16::try_from(id).map_err(|_| {
                                    Error::invalid("provided buffer id out of range")
                                })?)
                            }
                            None => None,
                        };
                    self.machine.handle(ReaderEvent::MultishotDone {
                        seq,
                        res,
                        buf_id,
                        more,
                    })?;
                }
                _ => {
                    self.ops.remove(&seq.get());
                    self.machine.handle(ReaderEvent::PollDone { seq, res })?;
                }
            }
        }
        Ok(())
    }

    /// The CQE-style result of a completion: bytes (or poll mask), or `-errno`. A typed
    /// error without an errno (e.g. the target was closed) is remembered and reported to
    /// `on_failed` as itself.
    fn res_of(&mut self, c: &Completion) -> i32 {
        match c.result() {
            Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
            Err(e) => self.res_of_error(e),
        }
    }

    /// `-errno` for `e`; see [`res_of`](Self::res_of).
    fn res_of_error(&mut self, e: Error) -> i32 {
        match e.raw_os_error() {
            Some(errno) => -errno,
            None => {
                self.typed_error.get_or_insert(e);
                if e.kind() == ErrorKind::StaleTarget {
                    -libc::EBADF
                } else {
                    -libc::EINVAL
                }
            }
        }
    }

    /// The error to report for the machine's `e`.
    fn reported(&self, e: Error) -> Error {
        match (self.typed_error, e.kind()) {
            (Some(t), ErrorKind::Os(libc::EBADF | libc::EINVAL)) => t,
            _ => e,
        }
    }

    fn retry_deferred(&mut self, ring: &mut Ring) -> Result<()> {
        while let Some(&a) = self.deferred.front() {
            if !self.try_submit(ring, a)? {
                break;
            }
            self.deferred.pop_front();
        }
        Ok(())
    }

    /// Submit a read (or multishot arm). `false`: no buffer yet, try again later.
    fn try_submit(&mut self, ring: &mut Ring, a: ReaderAction) -> Result<bool> {
        let (seq, op) = match a {
            ReaderAction::ReadAt { seq, offset, len } => (seq, self.read_op(seq, offset, len)),
            // Streams ignore the offset.
            ReaderAction::Read { seq, len } => (seq, self.read_op(seq, 0, len)),
            ReaderAction::ReadMultishot { seq, .. } => {
                let br = match &self.buf_ring {
                    Some(lease) => lease.buf_ring(),
                    None => match ring.lease_buf_ring(&self.pool, self.buf_ring_entries) {
                        Ok(lease) => self.buf_ring.insert(lease).buf_ring(),
                        Err(e) => {
                            // Complete the read here, as the kernel would have: a failure
                            // for `on_failed`.
                            let res = self.res_of_error(e);
                            self.machine.handle(ReaderEvent::MultishotDone {
                                seq,
                                res,
                                buf_id: None,
                                more: false,
                            })?;
                            return Ok(true);
                        }
                    },
                };
                if ring.buf_ring_offered(br) == 0 {
                    return Ok(false);
                }
                let op = Op::read_multishot(self.target, br).tag(tag(KIND_MULTISHOT, seq));
                (seq, Some(op))
            }
            _ => return Err(Error::invalid("not a read action")),
        };
        let Some(op) = op else {
            return Ok(false);
        };
        let id = ring.submit(op).to_queue(&self.events);
        self.ops.insert(seq.get(), id);
        Ok(true)
    }

    /// A read of `len` bytes at `offset` into a fresh slot, if one is free.
    fn read_op(&self, seq: Seq, offset: u64, len: u32) -> Option<Op> {
        let buf = self.pool.try_get().ok()?;
        let op = Op::read_len(self.target, offset, buf, len as usize).tag(tag(KIND_READ, seq));
        Some(if self.probing { op.nowait() } else { op })
    }

    fn run_actions(&mut self, ring: &mut Ring) -> Result<()> {
        while let Some(a) = self.machine.poll_action() {
            match a {
                ReaderAction::ReadAt { .. }
                | ReaderAction::Read { .. }
                | ReaderAction::ReadMultishot { .. } => {
                    if !self.deferred.is_empty() || !self.try_submit(ring, a)? {
                        self.buffer_waits += 1;
                        self.deferred.push_back(a);
                    }
                }
                ReaderAction::PollReadable { seq } => {
                    let op = Op::poll(self.target, libc::POLLIN as u32).tag(tag(KIND_POLL, seq));
                    let id = ring.submit(op).to_queue(&self.events);
                    self.ops.insert(seq.get(), id);
                }
                ReaderAction::Cancel { seq } => self.cancel(ring, seq)?,
                ReaderAction::Deliver(d) => {
                    let buf = match d.buf_id {
                        Some(id) => self.provided.get_mut(id as usize).and_then(Option::take),
                        None => self.filled.remove(&d.seq.get()),
                    };
                    let mut buf = buf.ok_or(Error::invalid(
                        "delivery of a buffer the reader does not hold",
                    ))?;
                    // At a known end of file the delivery may be shorter than the read.
                    buf.set_len(d.len as usize)?;
                    self.dispatch(d.seq, d.offset, buf)?;
                }
                ReaderAction::Discard { seq, buf_id } => {
                    match buf_id {
                        Some(id) => drop(self.provided.get_mut(id as usize).and_then(Option::take)),
                        None => drop(self.filled.remove(&seq.get())),
                    };
                }
                ReaderAction::Failed(e) => {
                    let e = self.reported(e);
                    let decision = (self.on_failed)(&self.callbacks.ctx, &e);
                    if decision == Restart::Yes {
                        self.typed_error = None;
                    }
                    self.machine.handle(ReaderEvent::Restart(decision))?;
                }
                ReaderAction::Finished(reason) => {
                    let reason = match reason {
                        FinishReason::Failed(e) => FinishReason::Failed(self.reported(e)),
                        r => r,
                    };
                    self.close(ring, reason);
                }
            }
        }
        Ok(())
    }

    fn cancel(&mut self, ring: &mut Ring, seq: Seq) -> Result<()> {
        if let Some(&id) = self.ops.get(&seq.get()) {
            // False when it already completed: its completion is on its way to us.
            ring.cancel(id);
            return Ok(());
        }
        let Some(pos) = self
            .deferred
            .iter()
            .position(|a| action_seq(a) == Some(seq))
        else {
            return Ok(());
        };
        // Never submitted: complete it here, as the kernel would have.
        let a = self.deferred.remove(pos);
        let res = -libc::ECANCELED;
        let ev = match a {
            Some(ReaderAction::ReadMultishot { .. }) => ReaderEvent::MultishotDone {
                seq,
                res,
                buf_id: None,
                more: false,
            },
            _ => ReaderEvent::ReadDone { seq, res },
        };
        self.machine.handle(ev)
    }

    fn dispatch(&mut self, seq: Seq, offset: u64, buf: PoolBuf) -> Result<()> {
        match &self.workers {
            None => {
                (self.callbacks.on_read)(&self.callbacks.ctx, buf, offset);
                self.machine.handle(ReaderEvent::Delivered { seq })
            }
            Some(w) => {
                // Each queued delivery owns a distinct slot, so the queue (sized to the
                // pool) has room; wait while workers drain it all the same.
                w.work.push_wait(Work::Read { seq, offset, buf });
                Ok(())
            }
        }
    }

    /// The machine finished: release everything and write the report.
    fn close(&mut self, ring: &mut Ring, reason: FinishReason) {
        if let Some(w) = &mut self.workers {
            w.shut_down();
        }
        if let Some(lease) = self.buf_ring.take() {
            // Cannot fail: the multishot read has completed (the machine finished). Were
            // it to, dropping the lease retires the ring all the same.
            let _ = ring.unregister_buf_ring(lease.buf_ring());
        }
        let s = self.machine.stats();
        self.report = Some(ReaderReport {
            reason,
            bytes: s.bytes_delivered,
            deliveries: s.deliveries,
            failures: s.failures,
            restarts: s.restarts,
            reads_issued: s.reads_issued,
            readiness_waits: s.readiness_waits,
            enobufs: self.enobufs,
            buffer_waits: self.buffer_waits,
            multishot: self.multishot,
        });
    }

    fn rethrow_worker_panic(&mut self) {
        let p = self
            .workers
            .as_ref()
            .and_then(|w| w.panic.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(p) = p {
            // The user's own panic from `on_read`, re-raised on the driving thread once
            // the reader has wound down (as `std::thread::scope` does).
            std::panic::resume_unwind(p);
        }
    }
}

impl<C, R, F> Drop for ContinuousReader<C, R, F> {
    /// An unfinished reader dropped: its operations in flight would keep their slots (a
    /// read on a silent stream, an armed multishot read) until the ring itself goes. The
    /// ring is asked to cancel them (through the reader's [`RingHandle`]), and the
    /// provided-buffer ring is retired; their completions land in `events`, which the ring
    /// drops with the last of them, buffers and all. Nothing is freed before the kernel
    /// has returned it. Drive the ring (e.g. [`Ring::run_until_idle`]) to finish.
    fn drop(&mut self) {
        if self.report.is_some() {
            return; // finished: nothing in flight, buffer ring unregistered
        }
        if let Some(h) = self.signal.ring.get() {
            for &id in self.ops.values() {
                h.cancel(id);
            }
        }
        drop(self.buf_ring.take());
        while self.events.pop().is_some() {}
    }
}

fn action_seq(a: &ReaderAction) -> Option<Seq> {
    match *a {
        ReaderAction::ReadAt { seq, .. }
        | ReaderAction::Read { seq, .. }
        | ReaderAction::ReadMultishot { seq, .. } => Some(seq),
        _ => None,
    }
}
