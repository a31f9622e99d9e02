//! The FIFO receive state machine (sans-I/O).

use std::collections::VecDeque;

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
pub struct OpId(u64);

impl OpId {
    /// An operation id from its raw value (for drivers decoding `user_data`, and fuzzers).
    pub const fn new(raw: u64) -> OpId {
        OpId(raw)
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
    /// Non-blocking read of up to `len` bytes into the buffer at offset `at`; report with
    /// [`FifoEvent::ReadDone`].
    Read {
        /// Tag of the read.
        seq: OpId,
        /// Offset in the transaction's buffer.
        at: u32,
        /// Space left in the buffer.
        len: u32,
    },
    /// Arm one one-shot readiness poll (`POLLIN`); report with [`FifoEvent::PollDone`].
    ArmPoll {
        /// Tag of the poll.
        seq: OpId,
    },
    /// Cancel operation `seq`; its completion must still be reported.
    Cancel {
        /// The operation to cancel.
        seq: OpId,
    },
    /// Run the `on_end` hook: nothing is in flight any more.
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
    /// A read completed: bytes, 0 at end of file, or `-errno` (`-EAGAIN`: nothing there).
    ReadDone {
        /// The read's tag.
        seq: OpId,
        /// Bytes read, or a negated errno.
        res: i32,
    },
    /// A readiness poll completed: the event mask (`POLLIN`, `POLLHUP`, ...) or `-errno`.
    PollDone {
        /// The poll's tag.
        seq: OpId,
        /// Poll mask, or a negated errno.
        res: i32,
    },
    /// Cancel the transaction.
    Cancel {
        /// The transaction.
        txn: TxnId,
    },
    /// The transaction's deadline expired.
    Deadline {
        /// The transaction.
        txn: TxnId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Read,
    Poll,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: OpId,
    kind: OpKind,
    /// The `len` of the read (0 for a poll).
    len: u32,
    cancelling: bool,
}

#[derive(Debug, Clone, Copy)]
struct Txn {
    id: TxnId,
    len: u32,
    bytes: u32,
    waits: u32,
    drain: bool,
    /// The operation in flight. Always `Some` while the transaction is active.
    op: Option<Pending>,
    /// Cancel or deadline requested: the status unless the transaction ends by itself.
    stop: Option<FifoStatus>,
}

/// The FIFO receiver's sans-I/O core: one transaction at a time, one operation in flight at
/// a time.
///
/// Total: every event is accepted or rejected with [`ErrorKind::NotInProgress`] (stale or
/// unknown ids, no transaction), [`ErrorKind::EventMismatch`] (a completion of the wrong
/// kind) or [`ErrorKind::ExcessBytes`] (a result larger than the read), and a rejected
/// event changes nothing. No heap allocation after construction.
///
/// # Rules
///
/// * `Begin` comes before the first `Read`; `End` and then `Complete` after the last
///   operation's completion, once per transaction.
/// * On `EAGAIN` exactly one `ArmPoll`; reading resumes only when the poll completes. No
///   busy loop: every read after the first follows either data or a poll.
/// * `POLLHUP` without `POLLIN`/`POLLERR` ends the transaction with [`FifoStatus::HangUp`];
///   a 0-byte read with [`FifoStatus::Eof`]; both carry the bytes received.
/// * Cancel and deadline: a `Cancel` for the operation in flight, then completion with
///   [`FifoStatus::Cancelled`] / [`FifoStatus::TimedOut`] once its completion is back. The
///   bytes of a read that completes meanwhile count; if that completion ends the transaction
///   by itself (buffer full, EOF, a hard error) its own status wins.
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

/// The status for an operation that failed with `errno`, given a pending stop request.
fn error_status(errno: i32, stop: Option<FifoStatus>) -> FifoStatus {
    match errno {
        libc::ECANCELED => stop.unwrap_or(FifoStatus::Cancelled),
        libc::ETIME | libc::ETIMEDOUT => stop.unwrap_or(FifoStatus::TimedOut),
        e => FifoStatus::Failed(Error::from_errno(e)),
    }
}

impl FifoMachine {
    /// An idle receiver.
    pub fn new() -> FifoMachine {
        FifoMachine {
            txn: None,
            next_seq: 0,
            next_txn: 0,
            // Begin + Read, or Cancel, or End + Complete (+ room to spare).
            actions: VecDeque::with_capacity(8),
            total_waits: 0,
        }
    }

    /// Start a transaction receiving exactly `len` bytes. Fails if one is in progress or
    /// `len` is 0 or above `i32::MAX`.
    pub fn receive(&mut self, len: u32) -> Result<TxnId> {
        self.start(len, false)
    }

    /// Start a drain transaction: read up to `capacity` bytes of whatever the source still
    /// holds, without waiting for readiness. Ends with [`FifoStatus::Drained`] (source
    /// empty), [`FifoStatus::Full`] or [`FifoStatus::Eof`].
    pub fn drain(&mut self, capacity: u32) -> Result<TxnId> {
        self.start(capacity, true)
    }

    fn start(&mut self, len: u32, drain: bool) -> Result<TxnId> {
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
            stop: None,
        });
        self.actions.push_back(FifoAction::Begin { txn: id, len });
        self.issue_read();
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

    /// True if an operation is in flight.
    pub fn has_op_in_flight(&self) -> bool {
        self.txn.is_some_and(|t| t.op.is_some())
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
            FifoEvent::ReadDone { seq, res } => self.on_done(seq, OpKind::Read, res),
            FifoEvent::PollDone { seq, res } => self.on_done(seq, OpKind::Poll, res),
            FifoEvent::Cancel { txn } => self.on_stop(txn, FifoStatus::Cancelled),
            FifoEvent::Deadline { txn } => self.on_stop(txn, FifoStatus::TimedOut),
        }
    }

    fn alloc_seq(&mut self) -> OpId {
        let s = OpId(self.next_seq);
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    fn issue_read(&mut self) {
        let seq = self.alloc_seq();
        let Some(t) = self.txn.as_mut() else { return };
        let at = t.bytes;
        let len = t.len - t.bytes;
        t.op = Some(Pending {
            seq,
            kind: OpKind::Read,
            len,
            cancelling: false,
        });
        self.actions.push_back(FifoAction::Read { seq, at, len });
    }

    fn issue_poll(&mut self) {
        let seq = self.alloc_seq();
        let Some(t) = self.txn.as_mut() else { return };
        t.waits = t.waits.saturating_add(1);
        self.total_waits += 1;
        t.op = Some(Pending {
            seq,
            kind: OpKind::Poll,
            len: 0,
            cancelling: false,
        });
        self.actions.push_back(FifoAction::ArmPoll { seq });
    }

    fn complete(&mut self, status: FifoStatus) {
        let Some(t) = self.txn.take() else { return };
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

    fn on_stop(&mut self, txn: TxnId, status: FifoStatus) -> Result<()> {
        let t = match self.txn.as_mut() {
            Some(t) if t.id == txn => t,
            _ => {
                return Err(Error::not_in_progress(
                    "FIFO transaction to cancel or time out",
                ))
            }
        };
        if t.stop.is_some() {
            return Ok(()); // the first request decides the status
        }
        t.stop = Some(status);
        match t.op.as_mut() {
            Some(op) => {
                if !op.cancelling {
                    op.cancelling = true;
                    let seq = op.seq;
                    self.actions.push_back(FifoAction::Cancel { seq });
                }
            }
            None => self.complete(status),
        }
        Ok(())
    }

    fn on_done(&mut self, seq: OpId, kind: OpKind, res: i32) -> Result<()> {
        let t = self
            .txn
            .as_mut()
            .ok_or(Error::not_in_progress("FIFO transaction"))?;
        let op = match t.op {
            Some(op) if op.seq == seq => op,
            _ => return Err(Error::not_in_progress("operation")),
        };
        if op.kind != kind {
            return Err(Error::new(ErrorKind::EventMismatch));
        }
        if kind == OpKind::Read && res > 0 && res as u32 > op.len {
            return Err(Error::new(ErrorKind::ExcessBytes));
        }
        t.op = None;
        let stop = t.stop;
        let drain = t.drain;
        match kind {
            OpKind::Read => {
                if res > 0 {
                    t.bytes += res as u32;
                    if t.bytes == t.len {
                        self.complete(FifoStatus::Full);
                    } else if let Some(status) = stop {
                        self.complete(status);
                    } else {
                        self.issue_read();
                    }
                } else if res == 0 {
                    self.complete(FifoStatus::Eof);
                } else {
                    match crate::error::errno_of(res) {
                        libc::EAGAIN | libc::EINTR if stop.is_some() => {
                            self.complete(stop.unwrap_or(FifoStatus::Cancelled));
                        }
                        libc::EAGAIN if drain => self.complete(FifoStatus::Drained),
                        libc::EAGAIN => self.issue_poll(),
                        libc::EINTR => self.issue_read(),
                        e => self.complete(error_status(e, stop)),
                    }
                }
            }
            OpKind::Poll => {
                if res < 0 {
                    match crate::error::errno_of(res) {
                        // Interrupted wait: the next read says whether data came.
                        libc::EINTR if stop.is_none() => self.issue_read(),
                        e => self.complete(error_status(e, stop)),
                    }
                } else if let Some(status) = stop {
                    self.complete(status);
                } else {
                    let mask = res as u32;
                    let readable = (libc::POLLIN | libc::POLLERR) as u32;
                    if mask & libc::POLLHUP as u32 != 0 && mask & readable == 0 {
                        self.complete(FifoStatus::HangUp);
                    } else {
                        self.issue_read();
                    }
                }
            }
        }
        Ok(())
    }
}
