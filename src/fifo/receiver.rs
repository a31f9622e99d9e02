//! [`FifoReceiver`]: the [`FifoMachine`] driven on a [`Ring`].
//!
//! The machine decides; this driver only translates. Each [`FifoAction::Read`] becomes an
//! [`Op::read_append`] into the transaction's buffer (the kernel writes straight after the
//! bytes already received: no copy), each [`FifoAction::ArmPoll`] one one-shot
//! [`Op::poll`] (`IORING_OP_POLL_ADD`, `POLLIN`), each [`FifoAction::Cancel`] a
//! [`Ring::cancel`]; their completions go back to the machine as events. Exactly one
//! operation is in flight per receiver, so a receiver costs the ring one op-table entry.
//!
//! ## Learning that the source ran dry
//!
//! io_uring does not answer `EAGAIN` to a read on an empty pipe, socket or tty, even one
//! opened `O_NONBLOCK`: Linux 6.x arms an internal poll and completes the read when data
//! comes. That would hide exactly what the machine needs to see. So reads are issued
//!
//! * with `RWF_NOWAIT` ([`Op::nowait`]): the kernel answers `-EAGAIN` at once when there
//!   is nothing to read (pipes, FIFOs, sockets: files with `FMODE_NOWAIT`);
//! * where the kernel refuses that (`EOPNOTSUPP`: ttys, many character devices), with a
//!   zero linked timeout instead: the read takes whatever is there at once, or is
//!   cancelled by the timeout right after the kernel found nothing — which the driver
//!   reports to the machine as `-EAGAIN`. The switch happens once per receiver, on the
//!   first `EOPNOTSUPP`, by reissuing the same read.

use std::fmt;
use std::time::{Duration, Instant};

use crate::buf::PoolBuf;
use crate::error::{Error, ErrorKind, Result};
use crate::request::{Bufs, Ticket};
use crate::ring::{Op, Ring, RingHandle, Target};

use super::machine::{
    FifoAction, FifoEvent, FifoMachine, FifoOutcome, FifoStatus, OpId as Seq, TxnId,
};

/// A transaction hook: `(transaction, bytes)`.
type Hook = Box<dyn FnMut(TxnId, u32) + Send + 'static>;

/// What the receiver's one operation in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// A read into the transaction's buffer (the ring holds the buffer).
    Read,
    /// A readiness poll (the receiver holds the buffer).
    Readiness,
}

/// How reads learn that the source is empty (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DryProbe {
    /// `RWF_NOWAIT`: `-EAGAIN` from the kernel.
    NoWait,
    /// A zero linked timeout: `TimedOut` means nothing was there.
    ZeroTimeout,
}

#[derive(Debug)]
struct InFlight {
    seq: Seq,
    what: Waiting,
    /// For a read: the bytes it asked for (to reissue it).
    len: usize,
    ticket: Ticket,
}

/// A finished transaction: the buffer, holding `outcome.bytes` bytes of data received,
/// and how the transaction ended.
#[derive(Debug)]
pub struct FifoReceived {
    /// The buffer; `buf.len() == outcome.bytes` and `buf.data()` is what was received,
    /// whatever the status (nothing received is ever dropped).
    pub buf: PoolBuf,
    /// Status, byte count, readiness waits of this transaction.
    pub outcome: FifoOutcome,
}

impl FifoReceived {
    /// How the transaction ended.
    pub fn status(&self) -> FifoStatus {
        self.outcome.status
    }

    /// Bytes received (also `buf.len()`).
    pub fn bytes(&self) -> usize {
        self.outcome.bytes as usize
    }

    /// Readiness notifications armed during this transaction.
    pub fn readiness_waits(&self) -> u32 {
        self.outcome.readiness_waits
    }

    /// `Ok(buf)` when the buffer is full (or a drain ended normally), the typed error
    /// otherwise ([`ErrorKind::UnexpectedEof`](crate::ErrorKind::UnexpectedEof) with the
    /// byte count for EOF and hang-up). On error the buffer and its bytes are dropped;
    /// read the fields instead to keep them.
    pub fn into_result(self) -> Result<PoolBuf> {
        self.outcome.into_result().map(|_| self.buf)
    }
}

/// A transaction refused before anything reached the kernel, with its buffer handed back.
#[derive(Debug)]
pub struct FifoRefused {
    /// Why.
    pub error: Error,
    /// The caller's buffer, untouched.
    pub buf: PoolBuf,
}

impl fmt::Display for FifoRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for FifoRefused {}

impl From<FifoRefused> for Error {
    fn from(r: FifoRefused) -> Error {
        r.error
    }
}

/// FIFO-style receive on a ring: fill a buffer from a non-blocking source that runs dry,
/// waiting for readiness, never spinning and never blocking a thread.
///
/// The source is a [`Target`] registered with the ring whose descriptor is a pipe, named
/// FIFO, socket, terminal (pty, serial tty) or other character device, open for reading
/// with `O_NONBLOCK`. Regular files and block devices never run dry and are refused.
///
/// A transaction ([`receive`](Self::receive)) reads as many bytes as the source holds
/// into the buffer, again and again with the remaining space, until the buffer holds
/// `len` bytes. When the source is empty (`EAGAIN`) it arms **one** readiness
/// notification (one-shot `POLL_ADD`) and reads again when it fires. The `on_begin` hook
/// runs before the first read of a transaction, `on_end` after the last, with the byte
/// count. Every transaction completes exactly once, as a [`FifoReceived`] whose
/// [`FifoStatus`] says why: `Full`; `Eof` or `HangUp` when the source ended first;
/// `Cancelled` ([`cancel`](Self::cancel)); `TimedOut`
/// ([`receive_with_deadline`](Self::receive_with_deadline)); `Failed`. In every case the
/// buffer comes back holding the bytes received so far.
///
/// Collect a completion with [`wait`](Self::wait) (drives the ring) or
/// [`poll`](Self::poll) (does not: for an event loop that drives one ring for many
/// sources). Before shutting down, [`drain`](Self::drain) saves whatever the source
/// still holds without waiting.
///
/// Dropping a receiver with a transaction in flight abandons it: its operation is
/// cancelled (a readiness wait on a silent source would otherwise keep the ring busy
/// forever) and the ring reclaims the buffer once the kernel is done with it, but its
/// bytes are lost and `on_end` does not run. Cancel and wait first.
///
/// A receiver works with the ring it was made for: the other methods refuse any other
/// ring (the ids of its operations mean nothing there).
///
/// ```
/// use iocomplete::{BufferPool, FifoReceiver, FifoStatus, Ring};
/// use std::io::Write;
/// use std::os::fd::{FromRawFd, OwnedFd};
///
/// let mut fds = [0; 2];
/// // SAFETY: `fds` has room for two descriptors.
/// assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) }, 0);
/// // SAFETY: pipe2 just returned these descriptors; each is owned once.
/// let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
/// let mut tx = std::fs::File::from(tx);
///
/// let mut ring = Ring::new()?;
/// let pool = BufferPool::builder().slots(2).slot_len(4096).build()?;
/// let source = ring.register(rx)?;
/// let mut fifo = FifoReceiver::new(&ring, source)?;
///
/// tx.write_all(b"hello ").unwrap();
/// fifo.receive(&mut ring, pool.try_get()?, 11)?;
/// fifo.poll(&mut ring)?; // nothing to collect yet: the ring has not run
/// ring.run_once(None)?; // reads "hello ", then finds the pipe empty
/// tx.write_all(b"world").unwrap();
/// let done = fifo.wait(&mut ring)?;
/// assert_eq!(done.status(), FifoStatus::Full);
/// assert_eq!(done.buf.data(), b"hello world");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FifoReceiver {
    target: Target,
    machine: FifoMachine,
    /// The transaction's buffer while no read holds it.
    buf: Option<PoolBuf>,
    /// The one operation in flight.
    op: Option<InFlight>,
    /// When the transaction times out; `None`: never (no deadline, or one so far away
    /// that it is not representable).
    deadline: Option<Instant>,
    /// The ring's handle, taken at the first transaction: a dropped receiver asks the ring
    /// through it to cancel its operation.
    handle: Option<RingHandle>,
    /// A completed transaction not yet handed out.
    done: Option<FifoReceived>,
    /// An operation's typed error without an errno (e.g. a closed target), so the outcome
    /// carries it rather than the stand-in errno the machine was fed.
    typed_failure: Option<Error>,
    on_begin: Option<Hook>,
    on_end: Option<Hook>,
    probe: DryProbe,
}

impl fmt::Debug for FifoReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FifoReceiver")
            .field("target", &self.target)
            .field("machine", &self.machine)
            .field("op", &self.op)
            .field("deadline", &self.deadline)
            .field("probe", &self.probe)
            .field("on_begin", &self.on_begin.is_some())
            .field("on_end", &self.on_end.is_some())
            .finish_non_exhaustive()
    }
}

/// `-errno` for the machine, from an operation's result.
fn as_res(r: Result<usize>, typed: &mut Option<Error>) -> i32 {
    match r {
        Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
        Err(e) => match e.raw_os_error() {
            Some(errno) => -errno,
            None => {
                *typed = Some(e);
                -libc::EINVAL
            }
        },
    }
}

impl FifoReceiver {
    /// A receiver for `source`, a target registered with `ring`. Refused with
    /// [`ErrorKind::WrongTargetKind`](crate::ErrorKind::WrongTargetKind) when the
    /// descriptor is a regular file, block device or other non-stream file; with
    /// [`ErrorKind::NotReadable`](crate::ErrorKind::NotReadable) when it is not open for
    /// reading; with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when it
    /// lacks `O_NONBLOCK`; with
    /// [`ErrorKind::StaleTarget`](crate::ErrorKind::StaleTarget) when `source` is not
    /// registered with `ring`.
    pub fn new(ring: &Ring, source: Target) -> Result<FifoReceiver> {
        let info = ring.info(source)?;
        if !info.kind.is_stream() {
            return Err(Error::wrong_kind(
                "a FIFO-like stream (pipe, FIFO, socket, tty or character device)",
                info.kind,
            ));
        }
        if !info.readable {
            return Err(Error::new(ErrorKind::NotReadable));
        }
        if !info.nonblocking {
            // With a blocking descriptor, a read the kernel cannot do without blocking
            // (a tty) would tie up an io_uring worker thread until data came.
            return Err(Error::invalid("FIFO source must be open with O_NONBLOCK"));
        }
        Ok(FifoReceiver {
            target: source,
            machine: FifoMachine::new(),
            buf: None,
            op: None,
            deadline: None,
            handle: None,
            done: None,
            typed_failure: None,
            on_begin: None,
            on_end: None,
            probe: DryProbe::NoWait,
        })
    }

    /// Set the hook run before the first read of each transaction, with the transaction
    /// and the bytes it wants (a drain: the buffer's capacity).
    pub fn on_begin(mut self, f: impl FnMut(TxnId, u32) + Send + 'static) -> Self {
        self.on_begin = Some(Box::new(f));
        self
    }

    /// Set the hook run after the last operation of each transaction, with the
    /// transaction and the bytes received, before its completion is handed out.
    pub fn on_end(mut self, f: impl FnMut(TxnId, u32) + Send + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }

    /// The source.
    pub fn target(&self) -> Target {
        self.target
    }

    /// The transaction in progress, if any.
    pub fn current(&self) -> Option<TxnId> {
        self.machine.current()
    }

    /// True while the receiver waits for the source to become readable (its readiness
    /// notification is armed).
    pub fn is_waiting_for_readiness(&self) -> bool {
        self.op
            .as_ref()
            .is_some_and(|o| o.what == Waiting::Readiness)
    }

    /// Readiness notifications armed over the receiver's lifetime: how often the source
    /// ran dry mid-transaction.
    pub fn readiness_waits(&self) -> u64 {
        self.machine.readiness_waits()
    }

    /// Whether reads use `RWF_NOWAIT` (true until the source refuses it; then a zero
    /// linked timeout tells an empty source, see the module docs).
    pub fn uses_nowait_reads(&self) -> bool {
        self.probe == DryProbe::NoWait
    }

    /// Transactions started (receives and drains).
    pub fn transactions(&self) -> u64 {
        self.machine.transactions()
    }

    /// Start a transaction receiving exactly `len` bytes into `buf` (its data area, from
    /// the start: whatever it held is discarded). Refused, with the buffer handed back and
    /// nothing submitted, when a transaction is in progress or its completion has not been
    /// collected ([`ErrorKind::InProgress`](crate::ErrorKind::InProgress)), when `len` is 0
    /// ([`ErrorKind::ZeroLength`](crate::ErrorKind::ZeroLength)), or above the
    /// buffer's capacity ([`ErrorKind::BufferTooSmall`](crate::ErrorKind::BufferTooSmall);
    /// a slot holds at most 1 GiB, so this covers every length above `i32::MAX` too).
    pub fn receive(
        &mut self,
        ring: &mut Ring,
        buf: PoolBuf,
        len: usize,
    ) -> Result<TxnId, FifoRefused> {
        self.start(ring, buf, len, None, false)
    }

    /// Like [`receive`](Self::receive), completing with [`FifoStatus::TimedOut`] (and
    /// the bytes received so far) if the buffer is not full within `timeout`. Reads never
    /// wait; each readiness wait carries a linked timeout for the time left, so a receiver
    /// waiting on a silent source is woken by the kernel when the deadline expires, and a
    /// transaction still receiving data past it ends at its next completion. A `timeout`
    /// too large to add to the current time (e.g. [`Duration::MAX`]) means no deadline.
    pub fn receive_with_deadline(
        &mut self,
        ring: &mut Ring,
        buf: PoolBuf,
        len: usize,
        timeout: Duration,
    ) -> Result<TxnId, FifoRefused> {
        self.start(ring, buf, len, Some(timeout), false)
    }

    /// Start a drain transaction: read whatever the source still holds into `buf` (up to
    /// its capacity) without waiting for readiness — what a receiver does before it shuts
    /// down so that nothing already received by the source is lost. Completes with
    /// [`FifoStatus::Drained`] (the source is empty), [`FifoStatus::Full`] (more may be
    /// left: drain again with another buffer) or [`FifoStatus::Eof`]. Refused like
    /// [`receive`](Self::receive); cancel a receive in progress (and collect its bytes)
    /// before draining.
    pub fn drain(&mut self, ring: &mut Ring, buf: PoolBuf) -> Result<TxnId, FifoRefused> {
        let cap = buf.capacity();
        self.start(ring, buf, cap, None, true)
    }

    fn start(
        &mut self,
        ring: &mut Ring,
        mut buf: PoolBuf,
        len: usize,
        timeout: Option<Duration>,
        drain: bool,
    ) -> Result<TxnId, FifoRefused> {
        let refuse = |error: Error, buf: PoolBuf| Err(FifoRefused { error, buf });
        if self.machine.current().is_some() || self.done.is_some() {
            return refuse(
                Error::new(ErrorKind::InProgress {
                    what: "a FIFO transaction (or its completion, not yet collected)",
                }),
                buf,
            );
        }
        if len > buf.capacity() {
            let error = Error::new(crate::ErrorKind::BufferTooSmall {
                need: len as u64,
                have: buf.capacity() as u64,
            });
            return refuse(error, buf);
        }
        // Also refuses a foreign ring: the target is not registered there.
        if let Err(error) = ring.info(self.target) {
            return refuse(error, buf);
        }
        let len32 = u32::try_from(len).unwrap_or(u32::MAX);
        let started = if drain {
            self.machine.drain(len32)
        } else {
            self.machine.receive(len32)
        };
        let txn = match started {
            Ok(t) => t,
            Err(error) => return refuse(error, buf),
        };
        if self.handle.is_none() {
            // Without it a dropped receiver cannot cancel its wait; it still works.
            self.handle = ring.handle().ok();
        }
        buf.clear();
        self.buf = Some(buf);
        // Overflow: a deadline beyond what an `Instant` holds never comes.
        self.deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        self.typed_failure = None;
        self.pump(ring);
        Ok(txn)
    }

    /// Ask for the transaction in progress to stop. It then completes — once — with
    /// [`FifoStatus::Cancelled`] and the bytes received so far (or with its own status if
    /// its last read filled the buffer or hit EOF meanwhile); collect it with
    /// [`wait`](Self::wait) or [`poll`](Self::poll). Returns false when no transaction
    /// is in progress. Cancelling twice, or after a deadline expired, changes nothing:
    /// the first stop decides the status. False, and nothing happens, on a ring other
    /// than the receiver's.
    pub fn cancel(&mut self, ring: &mut Ring) -> bool {
        if !ring.owns(self.target) {
            return false;
        }
        let Some(txn) = self.machine.current() else {
            return false;
        };
        if self.machine.handle(FifoEvent::Cancel { txn }).is_err() {
            return false;
        }
        self.pump(ring);
        true
    }

    /// Collect the transaction's completion if it is there, feeding the completions the
    /// ring has already produced to the machine and submitting what it asks for next. Does
    /// not drive the ring: call it after [`Ring::run_once`] (or [`Ring::poll`]) in an
    /// event loop. `Ok(None)` while the transaction goes on, and when there is none. `Err`
    /// if the ring itself failed, or is not the receiver's.
    pub fn poll(&mut self, ring: &mut Ring) -> Result<Option<FifoReceived>> {
        if !ring.owns(self.target) {
            return Err(Error::new(ErrorKind::WrongRing {
                what: "FIFO receiver",
            }));
        }
        loop {
            if let Some(r) = self.done.take() {
                return Ok(Some(r));
            }
            match &self.op {
                Some(op) if ring.is_done(&op.ticket) => {}
                _ => return Ok(None),
            }
            let Some(op) = self.op.take() else {
                return Ok(None);
            };
            let mut c = ring.wait(op.ticket)?;
            if let Bufs::Pool(b) = c.take_bufs() {
                self.buf = Some(b);
            }
            let result = c.result();
            if op.what == Waiting::Read {
                let errno = result.err().and_then(|e| e.raw_os_error());
                if self.probe == DryProbe::NoWait && errno == Some(libc::EOPNOTSUPP) {
                    // The file cannot say "empty" by itself: reissue the same read with
                    // a zero timeout, and keep doing so.
                    self.probe = DryProbe::ZeroTimeout;
                    self.issue_read(ring, op.seq, op.len);
                    continue;
                }
            }
            let res = match (op.what, self.probe, result) {
                (Waiting::Read, DryProbe::ZeroTimeout, Err(e)) if e.is_timed_out() => -libc::EAGAIN,
                (_, _, r) => as_res(r, &mut self.typed_failure),
            };
            if let (Some(txn), Some(at)) = (self.machine.current(), self.deadline) {
                if Instant::now() >= at {
                    // The deadline passed while this operation ran: the machine counts
                    // its bytes, then ends the transaction as timed out (the Cancel it
                    // asks for finds nothing in flight). Repeated deadlines are ignored.
                    let _ = self.machine.handle(FifoEvent::Deadline { txn });
                }
            }
            let event = match op.what {
                Waiting::Read => FifoEvent::ReadDone { seq: op.seq, res },
                Waiting::Readiness => FifoEvent::PollDone { seq: op.seq, res },
            };
            self.machine.handle(event)?;
            self.pump(ring);
        }
    }

    /// Drive the ring until the transaction completes, and return it. Sleeps in the
    /// kernel while the source is dry (no busy loop). `Err` when no transaction is in
    /// progress, the ring failed or is not the receiver's.
    pub fn wait(&mut self, ring: &mut Ring) -> Result<FifoReceived> {
        loop {
            if let Some(r) = self.poll(ring)? {
                return Ok(r);
            }
            if self.op.is_none() {
                return Err(Error::not_in_progress("FIFO transaction"));
            }
            ring.run_once(None)?;
        }
    }

    fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Issue the read `seq` of `len` bytes into the transaction's buffer, after the bytes
    /// it holds.
    fn issue_read(&mut self, ring: &mut Ring, seq: Seq, len: usize) {
        // The buffer is here: the machine reads only after the previous operation's
        // completion (which returned it) was fed to it.
        let Some(buf) = self.buf.take() else {
            debug_assert!(false, "FIFO read without its buffer");
            return;
        };
        // Reads never wait (see the module docs), so they need no deadline of their own.
        let op = Op::read_append(self.target, 0, buf, len);
        let op = match self.probe {
            DryProbe::NoWait => op.nowait(),
            DryProbe::ZeroTimeout => op.deadline(Duration::ZERO),
        };
        let ticket = ring.submit(op).ticket();
        self.op = Some(InFlight {
            seq,
            what: Waiting::Read,
            len,
            ticket,
        });
    }

    /// Carry out the machine's actions.
    fn pump(&mut self, ring: &mut Ring) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                FifoAction::Begin { txn, len } => {
                    if let Some(f) = self.on_begin.as_mut() {
                        f(txn, len);
                    }
                }
                FifoAction::Read { seq, at, len } => {
                    debug_assert_eq!(self.buf.as_ref().map(|b| b.len()), Some(at as usize));
                    self.issue_read(ring, seq, len as usize);
                }
                FifoAction::ArmPoll { seq } => {
                    let op = Op::poll(self.target, libc::POLLIN as u32);
                    let op = match self.remaining() {
                        Some(left) => op.deadline(left),
                        None => op,
                    };
                    let ticket = ring.submit(op).ticket();
                    self.op = Some(InFlight {
                        seq,
                        what: Waiting::Readiness,
                        len: 0,
                        ticket,
                    });
                }
                FifoAction::Cancel { seq } => {
                    if let Some(op) = self.op.as_ref().filter(|o| o.seq == seq) {
                        // False when the operation already completed (its completion
                        // waits in the ring): the machine handles that race.
                        let _ = ring.cancel(op.ticket.id());
                    }
                }
                FifoAction::End { txn, bytes } => {
                    if let Some(f) = self.on_end.as_mut() {
                        f(txn, bytes);
                    }
                }
                FifoAction::Complete(mut outcome) => {
                    if let (FifoStatus::Failed(_), Some(e)) =
                        (outcome.status, self.typed_failure.take())
                    {
                        outcome.status = FifoStatus::Failed(e);
                    }
                    self.deadline = None;
                    match self.buf.take() {
                        Some(buf) => self.done = Some(FifoReceived { buf, outcome }),
                        None => {
                            debug_assert!(false, "FIFO transaction completed without its buffer")
                        }
                    }
                }
            }
        }
    }
}

impl Drop for FifoReceiver {
    fn drop(&mut self) {
        // The ticket's own drop detaches the operation (the ring frees its buffer when the
        // kernel returns it); the cancel makes sure that happens even on a silent source.
        if let (Some(op), Some(h)) = (&self.op, &self.handle) {
            h.cancel(op.ticket.id());
        }
    }
}
