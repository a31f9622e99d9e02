//! [`FifoReceiver`]: the [`FifoMachine`] driven on a [`Ring`].
//!
//! The machine decides; this driver only translates. Each [`FifoAction::Read`] becomes an
//! [`Op::read_append`] into the transaction's buffer (the kernel writes straight after the
//! bytes already received: no copy), each [`FifoAction::ArmPoll`] one one-shot
//! [`Op::poll`] (`IORING_OP_POLL_ADD`, `POLLIN`), each [`FifoAction::Cancel`] a
//! cancel through the receiver's completion port, each [`FifoAction::ArmTimer`] the port's
//! timer; their completions go back to the machine as events. At most one operation (and
//! the deadline timer) is in flight per receiver.
//!
//! ## Learning that the source ran dry
//!
//! io_uring does not answer `EAGAIN` to a read on an empty pipe, socket or tty, even one
//! opened `O_NONBLOCK`: Linux 6.x arms an internal poll and completes the read when data
//! comes. That would hide exactly what the machine needs to see. So reads are issued
//!
//! * with `RWF_NOWAIT` ([`Op::nowait`]): the kernel answers `-EAGAIN` at once when there
//!   is nothing to read (pipes, FIFOs, sockets: files with `FMODE_NOWAIT`);
//! * where the kernel refuses that (`EOPNOTSUPP`: FIFOs opened by path, ttys, many
//!   character devices), after a `poll(2)` with a zero timeout on the ring thread: when
//!   it finds nothing, no read is submitted and the driver reports
//!   [`FifoEvent::ReadEmpty`] to the machine at once; when it finds data (or end of file,
//!   or an error) a plain read takes it. The switch happens once per receiver, on the
//!   first `EOPNOTSUPP`, by reissuing the same read.
//!
//! The probe costs one system call and no kernel timer. (It used to be a zero linked
//! timeout on every read: on a KVM guest, arming and cancelling that timer per read cost
//! a FIFO half or more of its throughput, PERF.md "FIFO receive".) Where a read and
//! `poll(2)` disagree, the probe's view wins: a FIFO that no writer has opened yet reads
//! as end of file but polls as "nothing yet", so the receiver waits for a writer (its
//! deadline, if any, still applies). One race is left to the deadline: if another
//! reader of the same source takes the data between the probe and the read, the read
//! waits in the kernel for more, without a readiness wait counted, until data comes, the
//! transaction's deadline passes, or it is cancelled — except in a drain, which must never
//! wait: its reads also carry a zero linked timeout.

use std::fmt;
use std::time::Duration;

use crate::buf::PoolBuf;
use crate::error::{Error, ErrorKind, Result};

use crate::ring::{Bufs, Driver, Op, Port, PortEvent, Ring, Target};

use super::machine::{FifoAction, FifoEvent, FifoMachine, FifoOutcome, FifoSeq, FifoStatus, TxnId};

/// A transaction hook: `(transaction, bytes)`.
type Hook = Box<dyn FnMut(TxnId, u32) + Send + 'static>;

/// How reads learn that the source is empty (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DryProbe {
    /// `RWF_NOWAIT`: `-EAGAIN` from the kernel.
    NoWait,
    /// `poll(2)` with a zero timeout before each read: nothing there, no read.
    PollFirst,
}

/// The receiver's one operation in flight, as the port records it.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: FifoSeq,
    /// `Some(len)`: a read of `len` bytes into the buffer (kept to reissue it); `None`: a
    /// readiness poll (the receiver holds the buffer).
    read: Option<usize>,
    /// The read carries a zero linked timeout: its `TimedOut` means the source was empty.
    zero_timeout: bool,
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
    /// otherwise ([`ErrorKind::UnexpectedEof`] with the
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
/// `Cancelled` ([`cancel`](Driver::cancel)); `TimedOut`
/// ([`receive_with_deadline`](Self::receive_with_deadline)); `Failed`. In every case the
/// buffer comes back holding the bytes received so far.
///
/// The receiver is a [`Driver`]: collect a completion with [`run`](Driver::run) (drives
/// the ring) or [`process`](Driver::process) (does not: for an event loop that drives one
/// ring for many sources). Before shutting down, [`drain`](Self::drain) saves whatever
/// the source still holds without waiting.
///
/// Dropping a receiver with a transaction in flight abandons it: its operation and timer
/// are cancelled (a readiness wait on a silent source would otherwise keep the ring busy
/// forever) and the ring reclaims the buffer once the kernel is done with it, but its
/// bytes are lost and `on_end` does not run. Cancel and run first.
///
/// A receiver works with the ring it was made for: the other methods refuse any other
/// ring (the ids of its operations mean nothing there).
///
/// ```
/// use iocomplete::{BufferPool, Driver, FifoReceiver, FifoStatus, Ring};
/// use std::io::Write;
/// use std::os::unix::net::UnixStream;
///
/// // Any stream source works the same way: a pipe, a named FIFO, a pty. A socket pair needs
/// // no unsafe code to make; the receiving end must be non-blocking.
/// let (rx, mut tx) = UnixStream::pair()?;
/// rx.set_nonblocking(true)?;
///
/// let mut ring = Ring::new()?;
/// let pool = BufferPool::builder().slots(2).slot_len(4096).build()?;
/// let source = ring.register(rx)?;
/// let mut fifo = FifoReceiver::new(&ring, source)?;
///
/// tx.write_all(b"hello ").unwrap();
/// fifo.receive(&mut ring, pool.try_get()?, 11)?;
/// fifo.process(&mut ring)?; // nothing to collect yet: the ring has not run
/// ring.run_once(None)?; // reads "hello ", then finds the pipe empty
/// tx.write_all(b"world").unwrap();
/// let done = fifo.run(&mut ring)?;
/// assert_eq!(done.status(), FifoStatus::Full);
/// assert_eq!(done.buf.data(), b"hello world");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FifoReceiver {
    target: Target,
    machine: FifoMachine,
    /// The transaction's buffer while no read holds it.
    buf: Option<PoolBuf>,
    /// The read or poll in flight, and the deadline timer.
    port: Port<InFlight>,
    /// A completed transaction not yet handed out.
    done: Option<FifoReceived>,
    on_begin: Option<Hook>,
    on_end: Option<Hook>,
    probe: DryProbe,
    /// A read the probe found nothing for (`DryProbe::PollFirst`): submitted as nothing,
    /// reported to the machine as `ReadEmpty` once the actions before it are carried out.
    found_empty: Option<FifoSeq>,
    /// The transaction is a drain, which must never wait (see `submit`).
    draining: bool,
}

impl fmt::Debug for FifoReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FifoReceiver")
            .field("target", &self.target)
            .field("machine", &self.machine)
            .field("port", &self.port)
            .field("probe", &self.probe)
            .field("found_empty", &self.found_empty)
            .field("on_begin", &self.on_begin.is_some())
            .field("on_end", &self.on_end.is_some())
            .finish_non_exhaustive()
    }
}

impl FifoReceiver {
    /// A receiver for `source`, a target registered with `ring`. Refused with
    /// [`ErrorKind::WrongTargetKind`] when the
    /// descriptor is a regular file, block device or other non-stream file; with
    /// [`ErrorKind::NotReadable`] when it is not open for
    /// reading; with [`ErrorKind::InvalidInput`] when it
    /// lacks `O_NONBLOCK`; with
    /// [`ErrorKind::StaleTarget`] when `source` is not
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
            port: Port::new(1),
            done: None,
            on_begin: None,
            on_end: None,
            probe: DryProbe::NoWait,
            found_empty: None,
            draining: false,
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
        self.port.find(|op| op.read.is_none()).is_some()
    }

    /// Readiness notifications armed over the receiver's lifetime: how often the source
    /// ran dry mid-transaction.
    pub fn readiness_waits(&self) -> u64 {
        self.machine.readiness_waits()
    }

    /// Whether reads use `RWF_NOWAIT` (true until the source refuses it; then a `poll(2)`
    /// with a zero timeout before each read tells an empty source, see the module docs).
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
    /// collected ([`ErrorKind::InProgress`]), when `len` is 0
    /// ([`ErrorKind::ZeroLength`]), or above the
    /// buffer's capacity ([`ErrorKind::BufferTooSmall`];
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
    /// wait; the deadline is a kernel timer armed with the transaction, so a receiver
    /// waiting on a silent source is woken by the kernel when it expires, and one still
    /// receiving data past it ends as soon as its read in flight is back. A `timeout` no
    /// kernel timer reaches (about 292 years or more, e.g. [`Duration::MAX`]) means no
    /// deadline.
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
            let error = Error::new(ErrorKind::BufferTooSmall {
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
            self.machine.drain(len32, timeout)
        } else {
            self.machine.receive(len32, timeout)
        };
        let txn = match started {
            Ok(t) => t,
            Err(error) => return refuse(error, buf),
        };
        // Without it a dropped receiver cannot cancel its wait; it still works.
        let _ = self.port.cancel_on_drop(ring);
        buf.clear();
        self.buf = Some(buf);
        self.draining = drain;
        self.pump(ring);
        Ok(txn)
    }

    /// Submit the machine's operation `seq`: a read of `Some(len)` bytes into the
    /// transaction's buffer, after the bytes it holds, or (`None`) a readiness poll.
    fn submit(&mut self, ring: &mut Ring, seq: FifoSeq, read: Option<usize>) {
        let mut zero_timeout = false;
        let op = match read {
            None => Op::poll(self.target, libc::POLLIN as u32),
            Some(len) => {
                if self.probe == DryProbe::PollFirst
                    && ring.readable_now(self.target) == Some(false)
                {
                    // Nothing there: no read (the buffer stays here), and the machine
                    // hears so from `pump` (see `found_empty`).
                    debug_assert!(self.found_empty.is_none());
                    self.found_empty = Some(seq);
                    return;
                }
                // The buffer is here: the machine reads only after the previous
                // operation's completion (which returned it) was fed to it.
                let Some(buf) = self.buf.take() else {
                    debug_assert!(false, "FIFO read without its buffer");
                    return;
                };
                // Reads do not wait for data (see the module docs for the one race a
                // probed source leaves): the deadline is the timer's.
                let op = Op::read_append(self.target, 0, buf, len);
                match self.probe {
                    DryProbe::NoWait => op.nowait(),
                    // A drain must not wait even if another reader took the data since the
                    // probe: its read also carries a zero linked timeout (one timer per
                    // drain read, not per read).
                    DryProbe::PollFirst if self.draining => {
                        zero_timeout = true;
                        op.deadline(Duration::ZERO)
                    }
                    // The probe found something (or could not tell): a plain read.
                    DryProbe::PollFirst => op,
                }
            }
        };
        let child = InFlight {
            seq,
            read,
            zero_timeout,
        };
        self.port.submit(ring, op, child);
    }

    /// Carry out the machine's actions; then tell it of a read the probe found nothing
    /// for, and carry out what it asks next (a readiness poll).
    fn pump(&mut self, ring: &mut Ring) {
        loop {
            self.act(ring);
            let Some(seq) = self.found_empty.take() else {
                return;
            };
            // The machine asked for this read and has had no event for it: it takes this.
            let handled = self.machine.handle(FifoEvent::ReadEmpty { seq });
            debug_assert!(handled.is_ok(), "ReadEmpty refused: {handled:?}");
        }
    }

    /// Carry out the machine's queued actions.
    fn act(&mut self, ring: &mut Ring) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                FifoAction::Begin { txn, len } => {
                    if let Some(f) = self.on_begin.as_mut() {
                        f(txn, len);
                    }
                }
                FifoAction::ArmTimer { after } => {
                    // A deadline no kernel timer reaches is none: the timer never comes.
                    let txn = self.machine.current();
                    if let (false, Some(txn)) = (self.port.arm_timer(ring, after), txn) {
                        let _ = self.machine.handle(FifoEvent::TimerCancelled { txn });
                    }
                }
                FifoAction::CancelTimer => _ = self.port.cancel_timer(ring),
                FifoAction::Read { seq, at, len } => {
                    debug_assert_eq!(self.buf.as_ref().map(|b| b.len()), Some(at as usize));
                    self.submit(ring, seq, Some(len as usize));
                }
                FifoAction::ArmPoll { seq } => self.submit(ring, seq, None),
                FifoAction::Cancel { seq } => {
                    if let Some(key) = self.port.find(|op| op.seq == seq) {
                        // False when the operation already completed (its completion
                        // waits in the port): the machine handles that race.
                        self.port.cancel(ring, key);
                    }
                }
                // The machine queues `End` right before `Complete`: the hook runs once the
                // completion is stored, so a hook that panics cannot lose it (the next
                // `process` hands it out).
                FifoAction::End { .. } => {}
                FifoAction::Complete(outcome) => {
                    let (txn, bytes) = (outcome.txn, outcome.bytes);
                    match self.buf.take() {
                        Some(buf) => self.done = Some(FifoReceived { buf, outcome }),
                        None => {
                            debug_assert!(false, "FIFO transaction completed without its buffer")
                        }
                    }
                    if let Some(f) = self.on_end.as_mut() {
                        f(txn, bytes);
                    }
                }
            }
        }
    }

    /// The machine's event for a completion of the port; `None` when the driver handled it
    /// itself (a read reissued).
    fn event(&mut self, ring: &mut Ring, ev: PortEvent<InFlight>) -> Option<FifoEvent> {
        let (child, result, bufs) = match ev {
            PortEvent::Op(d) => (d.child, d.result, d.bufs),
            PortEvent::Timer { fired } => {
                // The timer is armed only within a transaction, which waits for it.
                let txn = self.machine.current()?;
                return Some(if fired {
                    FifoEvent::Deadline { txn }
                } else {
                    FifoEvent::TimerCancelled { txn }
                });
            }
        };
        if let Bufs::Pool(b) = bufs {
            self.buf = Some(b);
        }
        let seq = child.seq;
        Some(match result {
            _ if child.read.is_none() => FifoEvent::PollDone { seq, result },
            Err(e)
                if self.probe == DryProbe::NoWait
                    && e.kind() == ErrorKind::Os(libc::EOPNOTSUPP) =>
            {
                // The file cannot say "empty" by itself: probe before this read and every
                // later one. The probe may find nothing: then that is the event.
                self.probe = DryProbe::PollFirst;
                self.submit(ring, seq, child.read);
                return self
                    .found_empty
                    .take()
                    .map(|seq| FifoEvent::ReadEmpty { seq });
            }
            // The zero timeout expired: the kernel found nothing to read.
            Err(e) if child.zero_timeout && e.is_timed_out() => FifoEvent::ReadEmpty { seq },
            result => FifoEvent::ReadDone { seq, result },
        })
    }
}

impl Driver for FifoReceiver {
    type Output = FifoReceived;

    /// Feed the completions the ring has already produced to the machine, submit what it
    /// asks for next, and hand out the transaction's completion once it is there. Does not
    /// drive the ring: call it after [`Ring::run_once`] (or [`Ring::poll`]) in an event
    /// loop. `Ok(None)` while the transaction goes on, and when there is none. `Err` if
    /// the ring is not the receiver's.
    fn process(&mut self, ring: &mut Ring) -> Result<Option<FifoReceived>> {
        if !ring.owns(self.target) {
            return Err(Error::new(ErrorKind::WrongRing {
                what: "FIFO receiver",
            }));
        }
        while let Some(ev) = self.port.next() {
            if let Some(event) = self.event(ring, ev) {
                self.machine.handle(event)?;
                self.pump(ring);
            }
        }
        Ok(self.done.take())
    }

    /// Ask for the transaction in progress to end early. It then completes — once — with
    /// [`FifoStatus::Cancelled`] and the bytes received so far (or with its own status if
    /// its last read filled the buffer or hit EOF meanwhile); collect it with
    /// [`run`](Driver::run) or [`process`](Driver::process). Returns false when no
    /// transaction is in progress. Cancelling twice, or after a deadline expired, changes
    /// nothing: the first of them decides the status. False, and nothing happens, on a
    /// ring other than the receiver's.
    fn cancel(&mut self, ring: &mut Ring) -> bool {
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

    /// No transaction in progress and nothing to collect.
    fn is_idle(&self) -> bool {
        self.machine.current().is_none() && self.done.is_none()
    }
}
