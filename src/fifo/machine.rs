//! The FIFO receive state machine (sans-I/O).

use std::collections::VecDeque;

use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// Identifies one transaction ([`FifoMachine::receive`] or [`FifoMachine::drain`]). Never
/// reused, so a late cancel or deadline for an old transaction is recognised as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId(u64);

impl TxnId {
    /// A transaction id from its raw value (for drivers and fuzzers).
    pub const fn new(raw: u64) -> TxnId {
        TxnId(raw)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Identifies one operation (read or poll) the machine asked for. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FifoSeq(u64);

impl FifoSeq {
    /// An operation id from its raw value (for drivers and fuzzers).
    pub const fn new(raw: u64) -> FifoSeq {
        FifoSeq(raw)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FifoStatus {
    /// The buffer is full: `len` bytes received.
    Full,
    /// The source ended (a 0-byte read) before the buffer was full.
    Eof,
    /// The poll reported a hang-up (`POLLHUP`) with nothing left to read.
    HangUp,
    /// Drain mode: the source had nothing more (`EAGAIN`).
    Drained,
    /// Cancelled (by [`FifoEvent::Cancel`], or the operation was cancelled under us).
    Cancelled,
    /// The deadline expired ([`FifoEvent::Deadline`], or the operation reported `ETIME`).
    TimedOut,
    /// A read or poll failed.
    Failed(Error),
}

/// The result of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FifoOutcome {
    /// The transaction.
    pub txn: TxnId,
    /// How it ended.
    pub status: FifoStatus,
    /// Bytes received, at the start of the buffer.
    pub bytes: u32,
    /// Readiness polls armed during the transaction.
    pub readiness_waits: u32,
}

impl FifoOutcome {
    /// The outcome as a `Result`: `Ok(bytes)` when the buffer is full or drained (drain
    /// mode), a typed error otherwise ([`ErrorKind::UnexpectedEof`] for `Eof`/`HangUp`).
    pub fn into_result(self) -> Result<u32> {
        match self.status {
            FifoStatus::Full | FifoStatus::Drained => Ok(self.bytes),
            FifoStatus::Eof | FifoStatus::HangUp => Err(Error::new(ErrorKind::UnexpectedEof {
                got: u64::from(self.bytes),
            })),
            FifoStatus::Cancelled => Err(Error::new(ErrorKind::Cancelled)),
            FifoStatus::TimedOut => Err(Error::new(ErrorKind::TimedOut)),
            FifoStatus::Failed(e) => Err(e),
        }
    }
}

/// What the driver must do next, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FifoAction {
    /// Run the `on_begin` hook; a transaction of `len` bytes starts.
    Begin {
        /// The transaction.
        txn: TxnId,
        /// Bytes wanted (drain mode: buffer capacity).
        len: u32,
    },
    /// Arm the transaction's deadline timer to fire after `after`; report it with
    /// [`FifoEvent::Deadline`] (it fired) or [`FifoEvent::TimerCancelled`] (it did not).
    ArmTimer {
        /// Time until the deadline.
        after: Duration,
    },
    /// Cancel the deadline timer; its completion must still be reported.
    CancelTimer,
    /// Non-blocking read of up to `len` bytes into the buffer at offset `at`; report with
    /// [`FifoEvent::ReadDone`] (or [`FifoEvent::ReadEmpty`]).
    Read {
        /// Tag of the read.
        seq: FifoSeq,
        /// Offset in the transaction's buffer.
        at: u32,
        /// Space left in the buffer.
        len: u32,
    },
    /// Arm one one-shot readiness poll (`POLLIN`); report with [`FifoEvent::PollDone`].
    ArmPoll {
        /// Tag of the poll.
        seq: FifoSeq,
    },
    /// Cancel operation `seq`; its completion must still be reported.
    Cancel {
        /// The operation to cancel.
        seq: FifoSeq,
    },
    /// Run the `on_end` hook: nothing is in flight any more (no operation, no timer).
    End {
        /// The transaction.
        txn: TxnId,
        /// Bytes received.
        bytes: u32,
    },
    /// The transaction is complete (exactly once per transaction, right after `End`).
    Complete(FifoOutcome),
}

/// What happened; feed it to [`FifoMachine::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FifoEvent {
    /// A read completed: the bytes read (0 at end of file), or the typed error
    /// ([`ErrorKind::Os`]`(EAGAIN)`: the source is empty, as [`ReadEmpty`](Self::ReadEmpty)).
    ReadDone {
        /// The read's tag.
        seq: FifoSeq,
        /// Bytes read, or the error.
        result: Result<u32>,
    },
    /// A read found the source empty and read nothing. What a driver reports when the
    /// kernel cannot answer `EAGAIN` for the source and the driver learns it otherwise
    /// (the [`FifoReceiver`](crate::FifoReceiver)'s probe found nothing to read).
    ReadEmpty {
        /// The read's tag.
        seq: FifoSeq,
    },
    /// A readiness poll completed: the event mask (`POLLIN`, `POLLHUP`, ...), or the
    /// typed error.
    PollDone {
        /// The poll's tag.
        seq: FifoSeq,
        /// Poll mask, or the error.
        result: Result<u32>,
    },
    /// Cancel the transaction.
    Cancel {
        /// The transaction.
        txn: TxnId,
    },
    /// The transaction's timer fired: its deadline passed.
    Deadline {
        /// The transaction.
        txn: TxnId,
    },
    /// The transaction's timer completed without firing: cancelled, or refused (e.g. a
    /// deadline no kernel timer reaches) — the transaction then has no deadline.
    TimerCancelled {
        /// The transaction.
        txn: TxnId,
    },
}

/// A completion of the operation in flight.
#[derive(Debug, Clone, Copy)]
enum Done {
    Read(Result<u32>),
    Empty,
    Poll(Result<u32>),
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: FifoSeq,
    poll: bool,
    /// The `len` of the read (0 for a poll).
    len: u32,
}

/// The deadline timer of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// None armed, or its completion is back.
    Off,
    /// Armed: it fires at the deadline.
    Armed,
    /// Asked to cancel; its completion (fired or not) is still to come.
    Cancelling,
}

#[derive(Debug, Clone, Copy)]
struct Txn {
    id: TxnId,
    len: u32,
    bytes: u32,
    waits: u32,
    drain: bool,
    /// The read or poll in flight.
    op: Option<Pending>,
    timer: Timer,
    /// Cancel or deadline requested: the status unless the transaction ends by itself.
    requested: Option<FifoStatus>,
    /// How it ended, once its last operation is back; it completes when the timer is.
    /// While the transaction is active, `op` or `end` is set.
    end: Option<FifoStatus>,
}

/// The FIFO receiver's sans-I/O core: one transaction at a time, one operation in flight at
/// a time, plus the transaction's deadline timer.
///
/// Total: every event is accepted or rejected with [`ErrorKind::NotInProgress`] (stale or
/// unknown ids, no transaction, a timer event with no timer armed),
/// [`ErrorKind::EventMismatch`] (a completion of the wrong kind) or
/// [`ErrorKind::ExcessBytes`] (a result larger than the read), and a rejected event changes
/// nothing. No heap allocation after construction.
///
/// # Rules
///
/// * `Begin` comes before the first `Read` (and `ArmTimer`, for a deadline); `End` and
///   then `Complete` after the last operation's completion and the timer's, once per
///   transaction.
/// * On `EAGAIN` exactly one `ArmPoll`; reading resumes only when the poll completes. No
///   busy loop: every read after the first follows either data or a poll.
/// * `POLLHUP` without `POLLIN`/`POLLERR` ends the transaction with [`FifoStatus::HangUp`];
///   a 0-byte read with [`FifoStatus::Eof`]; both carry the bytes received.
/// * Cancel and deadline: a `Cancel` for the operation in flight (and a `CancelTimer` for
///   the timer, on cancel), then completion with [`FifoStatus::Cancelled`] /
///   [`FifoStatus::TimedOut`] once its completion is back. The bytes of a read that
///   completes meanwhile count; if that completion ends the transaction by itself (buffer
///   full, EOF, a hard error) its own status wins. The first of cancel and deadline decides.
/// * A transaction that ends by itself with its timer armed asks `CancelTimer` and
///   completes when the timer is back, with its own status even if the timer fired.
/// * Drain mode never polls: `EAGAIN` ends it with [`FifoStatus::Drained`].
#[derive(Debug)]
pub struct FifoMachine {
    txn: Option<Txn>,
    next_seq: u64,
    next_txn: u64,
    actions: VecDeque<FifoAction>,
    total_waits: u64,
}

impl Default for FifoMachine {
    fn default() -> Self {
        Self::new()
    }
}

/// The status for an operation that failed with `e`, given a pending request.
fn error_status(e: Error, requested: Option<FifoStatus>) -> FifoStatus {
    match e.kind() {
        ErrorKind::Cancelled => requested.unwrap_or(FifoStatus::Cancelled),
        ErrorKind::TimedOut => requested.unwrap_or(FifoStatus::TimedOut),
        _ => FifoStatus::Failed(e),
    }
}

/// The transaction `id`, if it is the one in progress.
fn current(txn: &mut Option<Txn>, id: TxnId) -> Result<&mut Txn> {
    match txn.as_mut() {
        Some(t) if t.id == id => Ok(t),
        _ => Err(Error::not_in_progress(
            "FIFO transaction to cancel or time out",
        )),
    }
}

fn is_errno(e: Error, errno: i32) -> bool {
    e.kind() == ErrorKind::Os(errno)
}

impl FifoMachine {
    /// An idle receiver.
    pub fn new() -> FifoMachine {
        FifoMachine {
            txn: None,
            next_seq: 0,
            next_txn: 0,
            // Begin + ArmTimer + Read, or Cancel + CancelTimer, or End + Complete.
            actions: VecDeque::with_capacity(8),
            total_waits: 0,
        }
    }

    /// Start a transaction receiving exactly `len` bytes, ending as
    /// [`FifoStatus::TimedOut`] when `deadline` (if any) passes first. Fails if one is in
    /// progress or `len` is 0 or above `i32::MAX`.
    pub fn receive(&mut self, len: u32, deadline: Option<Duration>) -> Result<TxnId> {
        self.start(len, false, deadline)
    }

    /// Start a drain transaction: read up to `capacity` bytes of whatever the source still
    /// holds, without waiting for readiness. Ends with [`FifoStatus::Drained`] (source
    /// empty), [`FifoStatus::Full`] or [`FifoStatus::Eof`] (or as a receive, on cancel or
    /// `deadline`).
    pub fn drain(&mut self, capacity: u32, deadline: Option<Duration>) -> Result<TxnId> {
        self.start(capacity, true, deadline)
    }

    fn start(&mut self, len: u32, drain: bool, deadline: Option<Duration>) -> Result<TxnId> {
        if self.txn.is_some() {
            return Err(Error::new(ErrorKind::InProgress {
                what: "a FIFO transaction",
            }));
        }
        if len == 0 {
            return Err(Error::zero_length("receive"));
        }
        if len > i32::MAX as u32 {
            return Err(Error::out_of_range("receive length", 1, i32::MAX as u64));
        }
        let id = TxnId(self.next_txn);
        self.next_txn = self.next_txn.wrapping_add(1);
        self.txn = Some(Txn {
            id,
            len,
            bytes: 0,
            waits: 0,
            drain,
            op: None,
            timer: deadline.map_or(Timer::Off, |_| Timer::Armed),
            requested: None,
            end: None,
        });
        self.actions.push_back(FifoAction::Begin { txn: id, len });
        if let Some(after) = deadline {
            self.actions.push_back(FifoAction::ArmTimer { after });
        }
        self.issue(false);
        Ok(id)
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<FifoAction> {
        self.actions.pop_front()
    }

    /// The transaction in progress, if any.
    pub fn current(&self) -> Option<TxnId> {
        self.txn.map(|t| t.id)
    }

    /// True if an operation (a read, a poll, or the deadline timer) is in flight.
    pub fn has_op_in_flight(&self) -> bool {
        self.txn
            .is_some_and(|t| t.op.is_some() || t.timer != Timer::Off)
    }

    /// Transactions started over the machine's lifetime (receives and drains).
    pub fn transactions(&self) -> u64 {
        self.next_txn
    }

    /// Readiness polls armed over the machine's lifetime.
    pub fn readiness_waits(&self) -> u64 {
        self.total_waits
    }

    /// Feed one event. Impossible or stale events are rejected and change nothing.
    pub fn handle(&mut self, event: FifoEvent) -> Result<()> {
        match event {
            FifoEvent::ReadDone { seq, result } => self.on_done(seq, Done::Read(result)),
            FifoEvent::ReadEmpty { seq } => self.on_done(seq, Done::Empty),
            FifoEvent::PollDone { seq, result } => self.on_done(seq, Done::Poll(result)),
            FifoEvent::Cancel { txn } => self.on_cancel(txn, FifoStatus::Cancelled),
            FifoEvent::Deadline { txn } => self.on_timer(txn, true),
            FifoEvent::TimerCancelled { txn } => self.on_timer(txn, false),
        }
    }

    /// Issue the next read (or, `poll`, readiness poll) of the transaction.
    fn issue(&mut self, poll: bool) {
        let seq = FifoSeq(self.next_seq);
        self.next_seq = self.next_seq.wrapping_add(1);
        let Some(t) = self.txn.as_mut() else { return };
        let len = if poll { 0 } else { t.len - t.bytes };
        t.op = Some(Pending { seq, poll, len });
        if poll {
            t.waits = t.waits.saturating_add(1);
            self.total_waits += 1;
            self.actions.push_back(FifoAction::ArmPoll { seq });
        } else {
            let at = t.bytes;
            self.actions.push_back(FifoAction::Read { seq, at, len });
        }
    }

    /// The transaction's last operation is back and ended it with `status`: complete it,
    /// or first cancel its timer and wait for it.
    fn end(&mut self, status: FifoStatus) {
        let Some(t) = self.txn.as_mut() else { return };
        t.end = Some(status);
        if t.timer == Timer::Armed {
            t.timer = Timer::Cancelling;
            self.actions.push_back(FifoAction::CancelTimer);
        }
        self.complete_if_done();
    }

    fn complete_if_done(&mut self) {
        let Some(t) = self.txn else { return };
        let Some(status) = t.end.filter(|_| t.timer == Timer::Off) else {
            return;
        };
        self.txn = None;
        self.actions.push_back(FifoAction::End {
            txn: t.id,
            bytes: t.bytes,
        });
        self.actions.push_back(FifoAction::Complete(FifoOutcome {
            txn: t.id,
            status,
            bytes: t.bytes,
            readiness_waits: t.waits,
        }));
    }

    /// Cancel (`Cancelled`) or the deadline (`TimedOut`): cancel what is in flight.
    fn on_cancel(&mut self, txn: TxnId, status: FifoStatus) -> Result<()> {
        let t = current(&mut self.txn, txn)?;
        if t.requested.is_some() || t.end.is_some() {
            return Ok(()); // the first request, or the transaction's own end, decides
        }
        // Once: no operation is issued after a request.
        t.requested = Some(status);
        if let Some(op) = t.op {
            self.actions.push_back(FifoAction::Cancel { seq: op.seq });
        }
        if t.timer == Timer::Armed && status == FifoStatus::Cancelled {
            t.timer = Timer::Cancelling;
            self.actions.push_back(FifoAction::CancelTimer);
        }
        Ok(())
    }

    fn on_timer(&mut self, txn: TxnId, fired: bool) -> Result<()> {
        let t = current(&mut self.txn, txn)?;
        if t.timer == Timer::Off {
            return Err(Error::not_in_progress("FIFO timer"));
        }
        t.timer = Timer::Off;
        if fired {
            self.on_cancel(txn, FifoStatus::TimedOut)?;
        }
        self.complete_if_done();
        Ok(())
    }

    fn on_done(&mut self, seq: FifoSeq, done: Done) -> Result<()> {
        let t = self
            .txn
            .as_mut()
            .ok_or(Error::not_in_progress("FIFO transaction"))?;
        let op = match t.op {
            Some(op) if op.seq == seq => op,
            _ => return Err(Error::not_in_progress("operation")),
        };
        if op.poll != matches!(done, Done::Poll(_)) {
            return Err(Error::new(ErrorKind::EventMismatch));
        }
        if let Done::Read(Ok(n)) = done {
            if n > op.len {
                return Err(Error::new(ErrorKind::ExcessBytes));
            }
        }
        t.op = None;
        let requested = t.requested;
        let empty = requested.or(t.drain.then_some(FifoStatus::Drained));
        // `Some(status)`: the transaction ends; `None`: it goes on (`poll`: with a poll).
        let (end, poll) = match done {
            Done::Read(Ok(0)) => (Some(FifoStatus::Eof), false),
            Done::Read(Ok(n)) => {
                t.bytes += n;
                let full = (t.bytes == t.len).then_some(FifoStatus::Full);
                (full.or(requested), false)
            }
            Done::Empty => (empty, true),
            Done::Read(Err(e)) if is_errno(e, libc::EAGAIN) => (empty, true),
            Done::Read(Err(e)) if is_errno(e, libc::EINTR) => (requested, false),
            // Interrupted wait: the next read says whether data came.
            Done::Poll(Err(e)) if is_errno(e, libc::EINTR) && requested.is_none() => (None, false),
            Done::Read(Err(e)) | Done::Poll(Err(e)) => (Some(error_status(e, requested)), false),
            Done::Poll(Ok(_)) if requested.is_some() => (requested, false),
            Done::Poll(Ok(mask)) => {
                let readable = (libc::POLLIN | libc::POLLERR) as u32;
                let hup = mask & libc::POLLHUP as u32 != 0 && mask & readable == 0;
                (hup.then_some(FifoStatus::HangUp), false)
            }
        };
        match end {
            Some(status) => self.end(status),
            None => self.issue(poll),
        }
        Ok(())
    }
}
