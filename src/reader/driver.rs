//! [`ContinuousReader`]: the [`ReaderMachine`] driven on a [`Ring`].
//!
//! The machine decides; this module executes. Each [`ReaderAction`] becomes a ring
//! operation (a positional or stream read into a pool slot, a multishot read from a
//! provided-buffer ring, a readiness poll, a cancel) or a call of the user's callbacks,
//! and each completion goes back to the machine as a [`ReaderEvent`]. Every operation the
//! reader submits goes through its own [`Port`], recorded as a [`Child`] (what kind of
//! operation, for which [`Seq`]), so completions of other operations on the same ring
//! are untouched. The builder is in `builder`, the kinds of callbacks in `callbacks`, read
//! submission and cancels in `submit`, worker threads and cancel handles in `workers`, the
//! provided-buffer ring of multishot reads in `multishot`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::buf::{BufferPool, PoolBuf};
use crate::error::{Error, ErrorKind, Result};
use crate::ring::{Bufs, Done, Driver, Op, Port, PortEvent, Ring, Target};

use super::{FinishReason, ReaderAction, ReaderEvent, ReaderMachine, ReaderStats, Seq};

mod builder;
mod callbacks;
mod multishot;
mod submit;
mod workers;

pub use builder::ContinuousReaderBuilder;
pub use callbacks::{Callbacks, Local, Shared};
pub use multishot::StreamReads;
pub use workers::{CancelHandle, Dispatch};

use multishot::Provided;
use workers::{Signal, Workers};

/// How long to wait before re-checking for free slots when a submission waits for one
/// (slots return to the pool from any thread without notifying the ring).
const BUFFER_RECHECK: Duration = Duration::from_millis(1);

/// The longest single wait in the kernel. A completion the kernel fails to signal (seen on
/// Linux 6.18 with multishot reads of a pty under load: the wake-up work stays queued on
/// the task until its next `io_uring_enter`) then costs at most this much latency, never
/// a hang.
const KERNEL_RECHECK: Duration = Duration::from_millis(250);

/// What an operation in the port is for.
#[derive(Debug, Clone, Copy)]
struct Child {
    kind: Kind,
    seq: Seq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A single-shot read into a pool slot.
    Read,
    /// A multishot read from the provided-buffer ring.
    Multishot,
    /// A readiness poll.
    Poll,
}

/// How a reader ended, with its counters. Handed out once by
/// [`Driver::process`] (and so by [`Driver::step`] / [`Driver::run`]).
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
    /// Restarts (`on_failed` answered [`Restart::Yes`](super::Restart::Yes)).
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

/// A continuous reader: keeps `pending_reads` reads in flight on one source and hands
/// every filled buffer to `on_read`, re-arming at once, until cancelled, end of file or
/// end of range; on error, drains what is in flight and asks `on_failed` whether to
/// restart.
///
/// The sans-I/O [`ReaderMachine`] holds the logic; this type executes it on a [`Ring`].
///
/// # Callbacks
///
/// Given to the builder; closures capture what they need.
///
/// * [`on_read(buf, offset)`](ContinuousReaderBuilder::on_read) — `buf` holds the bytes
///   read at `offset` (the file offset for files and block devices; for streams, the
///   bytes delivered before it). `buf.len()` counts the data only; the pool's header room
///   sits in front of it (`buf.header()`, `buf.frame()`), untouched by the kernel.
///   Dropping `buf` returns the slot at once; keeping it (or
///   [`share`](PoolBuf::share)-ing it) extends its life — a reader then waits for slots
///   when the pool runs dry.
/// * [`on_failed(&error) -> Restart`](ContinuousReaderBuilder::on_failed) — after a read
///   failed and every read still in flight has come back (those before the failure
///   delivered, those after it dropped). [`Restart::Yes`](super::Restart::Yes) re-arms
///   from where delivery stopped: nothing is delivered twice or skipped.
///   [`Restart::No`](super::Restart::No) ends the reader with [`FinishReason::Failed`].
///
/// The type parameter says what the callbacks may be:
///
/// * [`Shared`] (the default; [`ContinuousReader::builder`]): `on_read` is
///   `Fn + Send + Sync + 'static`, `on_failed` is `FnMut + Send + 'static`. `on_read` may
///   run on worker threads ([`Dispatch::Workers`]), and the reader is `Send`: it can move
///   to another thread between calls of [`Driver::process`].
/// * [`Local<'a>`](Local) ([`ContinuousReader::local_builder`]): both are `FnMut + 'a` —
///   they may mutate what they capture and borrow the caller's locals, and need not be
///   `Send`, `Sync` or `'static`. They always run inline, on the driving thread (the local
///   builder has no [`dispatch`](ContinuousReaderBuilder::dispatch)), and the reader is
///   not `Send`.
///
/// # Synchronization (the continuous-reader rules)
///
/// * For one reader, `on_failed` never runs at the same time as `on_read`: the machine
///   emits the failure only after every delivery has been acknowledged, and a delivery is
///   acknowledged only after `on_read` returned (on whichever thread it ran). Everything
///   `on_read` did happens-before `on_failed` starts.
/// * With [`Dispatch::Workers`] and more than one pending read, `on_read` can run again
///   (on another worker) before an earlier call returned. With [`Dispatch::Inline`] (and
///   so always with [`Local`] callbacks) it never overlaps itself: `on_read` and
///   `on_failed` run one at a time, inside [`Driver::process`] (and so inside
///   [`step`](Driver::step) and [`run`](Driver::run)), on the thread calling it — for a
///   [`Local`] reader, which is not `Send`, always the thread that built it. Nothing the
///   callbacks borrow is touched by the reader outside those calls.
/// * Different readers are not synchronized with each other, and nothing else is.
///
/// # Driving
///
/// A [`Driver`]: the thread that owns the ring drives the reader — [`Driver::run`] until
/// it finishes, or [`Driver::step`] step by step to interleave other work on the same
/// ring (each step waits for one batch of completions, re-checking at least every
/// 250 ms). A cancel or an acknowledgement from another thread wakes a driver blocked in
/// the ring through the ring's own wake-up poll ([`RingHandle::wake`]).
/// [`Driver::cancel`] / [`CancelHandle::cancel`] cancel what is in flight; the reader
/// finishes with [`FinishReason::Cancelled`] once every completion is back, with no slot
/// leaked. `ring` must be the ring the reader was built on ([`ErrorKind::WrongRing`]
/// otherwise, and nothing happens).
///
/// A panic raised by `on_read` on a worker thread cancels the reader; once it has wound
/// down (nothing in flight, no slot leaked) the panic is resumed in
/// [`Driver::process`], on the driving thread, as `std::thread::scope` does.
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
/// [`RingHandle::wake`]: crate::RingHandle::wake
///
/// ```
/// use iocomplete::{BufferPool, ContinuousReader, Driver, Ring};
/// use std::sync::{Arc, Mutex};
///
/// let mut f = tempfile::tempfile().unwrap();
/// std::io::Write::write_all(&mut f, &[42u8; 100_000]).unwrap();
/// let mut ring = Ring::new()?;
/// let pool = BufferPool::builder().slots(8).slot_len(16 * 1024).header_len(8).build()?;
/// let file = ring.register(f)?;
///
/// let out = Arc::new(Mutex::new(Vec::new()));
/// let o = out.clone();
/// let mut reader = ContinuousReader::builder(file, &pool)
///     .pending_reads(4)
///     .ordered(true)
///     .on_read(move |buf, _offset| o.lock().unwrap().extend_from_slice(buf.data()))
///     .build(&mut ring)?;
/// let report = reader.run(&mut ring)?;
/// assert_eq!(report.bytes, 100_000);
/// assert_eq!(*out.lock().unwrap(), vec![42u8; 100_000]);
/// assert_eq!(pool.stats().free, 8);
/// # Ok::<(), iocomplete::Error>(())
/// ```
pub struct ContinuousReader<C: Callbacks = Shared> {
    machine: ReaderMachine,
    target: Target,
    pool: BufferPool,
    /// Every operation this reader submitted. Dropped with an unfinished reader, it
    /// cancels what is in flight (`cancel_on_drop`).
    port: Port<Child>,
    /// Completed single-shot reads whose buffer awaits `Deliver` or `Discard`, by `Seq`.
    /// Sized at build for the reorder window and the reads in flight: no allocation in
    /// steady state.
    filled: HashMap<u64, PoolBuf>,
    /// Multishot: the provided-buffer ring and the buffers its completions handed out.
    /// Dropped with an unfinished reader (after `port`), it retires the buffer ring.
    provided: Provided,
    /// Submissions waiting for a free slot (or provided buffer), in issue order.
    deferred: VecDeque<ReaderAction>,
    /// Multishot is wanted, but the source must first show that it can be read without
    /// blocking: the next stream read carries `RWF_NOWAIT` (see [`StreamReads`]).
    probing: bool,
    signal: Arc<Signal>,
    cancel_applied: bool,
    /// Written when the machine finishes.
    report: Option<ReaderReport>,
    /// The report went out through `process`.
    handed_out: bool,
    enobufs: u64,
    buffer_waits: u64,
    workers: Option<Workers>,
    callbacks: C,
    multishot: bool,
}

impl<C: Callbacks> fmt::Debug for ContinuousReader<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContinuousReader")
            .field("target", &self.target)
            .field("finished", &self.report.is_some())
            .field("in_flight", &self.machine.in_flight())
            .field("unacked", &self.machine.unacked())
            .field("deferred", &self.deferred.len())
            .field("multishot", &self.multishot)
            .field("stats", &self.machine.stats())
            .field("callbacks", &self.callbacks)
            .finish_non_exhaustive()
    }
}

impl<C: Callbacks> ContinuousReader<C> {
    /// A handle that cancels this reader from any thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle {
            signal: self.signal.clone(),
        }
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

    /// The report, once the reader has finished (whether or not `process` handed it out).
    pub fn report(&self) -> Option<ReaderReport> {
        self.report
    }

    /// Process everything available without waiting.
    fn pump(&mut self, ring: &mut Ring) -> Result<()> {
        // Acquire: pairs with the Release in `CancelHandle::cancel`.
        if !self.cancel_applied && self.signal.cancel.load(Ordering::Acquire) {
            self.cancel_applied = true;
            self.machine.cancel();
        }
        if let Some(w) = &self.workers {
            while let Some(seq) = w.ack() {
                self.machine.handle(ReaderEvent::Delivered { seq })?;
            }
        }
        while let Some(ev) = self.port.next() {
            if let PortEvent::Op(done) = ev {
                self.complete(done)?;
            }
        }
        self.retry_deferred(ring)?;
        self.run_actions(ring)?;
        // Deliveries may have returned slots that deferred reads are waiting for.
        self.retry_deferred(ring)
    }

    /// One completion, to the machine.
    fn complete(&mut self, done: Done<Child>) -> Result<()> {
        let Child { kind, seq } = done.child;
        let result = done.result;
        let buf = match done.bufs {
            Bufs::Pool(b) => Some(b),
            _ => None,
        };
        let event = match kind {
            Kind::Read => {
                if std::mem::take(&mut self.probing) {
                    if result.is_err_and(|e| e.raw_os_error() == Some(libc::EOPNOTSUPP)) {
                        // No RWF_NOWAIT, so no multishot (see `StreamReads`); nothing was
                        // read. The same read again, without the flag.
                        self.multishot = false;
                        let len = self.machine.config().transfer_len();
                        self.deferred.push_front(ReaderAction::Read { seq, len });
                        return Ok(());
                    }
                    // Multishot from the next read on (this one is a normal read).
                    self.machine.set_multishot(true)?;
                }
                if let Some(b) = buf {
                    self.filled.insert(seq.get(), b);
                }
                ReaderEvent::ReadDone { seq, result }
            }
            Kind::Multishot => {
                if result.is_err_and(|e| e.raw_os_error() == Some(libc::ENOBUFS)) {
                    self.enobufs += 1;
                }
                ReaderEvent::MultishotDone {
                    seq,
                    result,
                    buf_id: buf.map(|b| self.provided.keep(b)).transpose()?,
                    more: done.more,
                }
            }
            Kind::Poll => ReaderEvent::PollDone { seq, result },
        };
        self.machine.handle(event)
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
                    let op = Op::poll(self.target, libc::POLLIN as u32);
                    let child = Child {
                        kind: Kind::Poll,
                        seq,
                    };
                    self.port.submit(ring, op, child);
                }
                ReaderAction::Cancel { seq } => self.cancel_op(ring, seq)?,
                ReaderAction::Deliver(d) => {
                    let buf = match d.buf_id {
                        Some(id) => self.provided.take(id),
                        None => self.filled.remove(&d.seq.get()),
                    };
                    let mut buf = buf.ok_or(Error::invalid(
                        "delivery of a buffer the reader does not hold",
                    ))?;
                    // At a known end of file the delivery may be shorter than the read.
                    buf.set_len(d.len as usize)?;
                    match &self.workers {
                        None => {
                            self.callbacks.read(buf, d.offset);
                            self.machine.handle(ReaderEvent::Delivered { seq: d.seq })?;
                        }
                        Some(w) => w.dispatch(d.seq, d.offset, buf),
                    }
                }
                ReaderAction::Discard { seq, buf_id } => {
                    match buf_id {
                        Some(id) => drop(self.provided.take(id)),
                        None => drop(self.filled.remove(&seq.get())),
                    };
                }
                ReaderAction::Failed(e) => {
                    let decision = self.callbacks.failed(&e);
                    self.machine.handle(ReaderEvent::Restart(decision))?;
                }
                ReaderAction::Finished(reason) => self.close(ring, reason),
            }
        }
        Ok(())
    }

    /// The machine finished: release everything and write the report.
    fn close(&mut self, ring: &mut Ring, reason: FinishReason) {
        if let Some(w) = &mut self.workers {
            w.shut_down();
        }
        self.provided.unregister(ring);
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
}

impl<C: Callbacks> Driver for ContinuousReader<C> {
    type Output = ReaderReport;

    /// Process what has completed and what other threads handed over (acknowledgements,
    /// a cancel); hand out the report once the reader has finished. Resumes a panic
    /// `on_read` raised on a worker, once the reader has wound down.
    fn process(&mut self, ring: &mut Ring) -> Result<Option<ReaderReport>> {
        if !ring.owns(self.target) {
            return Err(Error::new(ErrorKind::WrongRing { what: "reader" }));
        }
        if self.report.is_none() {
            self.pump(ring)?;
        }
        if self.report.is_none() || self.handed_out {
            return Ok(None);
        }
        let panic = self.workers.as_ref().and_then(Workers::take_panic);
        if let Some(p) = panic {
            // The user's own panic from `on_read`, re-raised on the driving thread once
            // the reader has wound down (as `std::thread::scope` does).
            std::panic::resume_unwind(p);
        }
        self.handed_out = true;
        Ok(self.report)
    }

    /// Cancel the reader (as [`CancelHandle::cancel`]): the next
    /// [`process`](Driver::process) cancels what is in flight, and the reader finishes
    /// with [`FinishReason::Cancelled`] once every completion is back. False once
    /// finished or already cancelled.
    fn cancel(&mut self, _ring: &mut Ring) -> bool {
        let handle = self.cancel_handle();
        if self.report.is_some() || handle.is_cancelled() {
            return false;
        }
        handle.cancel();
        true
    }

    fn is_idle(&self) -> bool {
        self.handed_out
    }

    /// Block in the ring until a completion arrives (or `timeout`, at most 250 ms; 1 ms
    /// while a read waits for a free slot), unless another thread has already handed us
    /// work.
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
        let has_work = self.workers.as_ref().is_some_and(Workers::has_acks)
            || (!self.cancel_applied && self.signal.cancel.load(Ordering::Relaxed))
            || self.port.has_events();
        let r = if has_work {
            ring.poll().map(drop)
        } else {
            ring.run_once(timeout).map(drop)
        };
        self.signal.sleeping.clear();
        r
    }
}
