//! What the reader's machine and its driver tell each other: the actions the machine asks
//! for, the events the driver feeds back, and the values they carry.

use crate::error::Error;

/// Identifies one operation the machine asked for (a read, a poll, a multishot arm) or one
/// multishot delivery. Unique for the machine's lifetime, never reused.
///
/// The driver keys the buffer it reads into by the read's `Seq`, and records the `Seq`
/// with the operation so that the completion can be routed back with
/// [`ReaderEvent::ReadDone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(u64);

impl Seq {
    /// A sequence number from its raw value (for drivers and fuzzers).
    pub const fn new(raw: u64) -> Seq {
        Seq(raw)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// The user's decision after [`ReaderAction::Failed`] (what `on_failed` returned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Re-arm from where delivery stopped: nothing delivered twice, nothing skipped.
    Yes,
    /// End the reader with [`FinishReason::Failed`].
    No,
}

/// Why a reader finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A read returned 0 bytes: the source has no more data.
    Eof,
    /// Every byte of the configured range was delivered.
    EndOfRange,
    /// [`ReaderMachine::cancel`](crate::reader::ReaderMachine::cancel) was called.
    Cancelled,
    /// A read failed and the user chose [`Restart::No`].
    Failed(Error),
}

/// Bytes to hand to the user's `on_read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The read that filled the buffer (single-shot reads), or a fresh number identifying
    /// this delivery (multishot). Acknowledge with [`ReaderEvent::Delivered`].
    pub seq: Seq,
    /// Offset of the first byte: the file offset for positional sources, the number of
    /// bytes delivered before this one for streams.
    pub offset: u64,
    /// Bytes delivered (may be less than the read's completion reported, at EOF).
    pub len: u32,
    /// For multishot reads: the provided buffer holding the data. `None`: the buffer of
    /// read `seq`.
    pub buf_id: Option<u16>,
}

/// What the driver must do next. Pull them with [`ReaderMachine::poll_action`](crate::reader::ReaderMachine::poll_action) and execute
/// them in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderAction {
    /// Positional read of `len` bytes at `offset` into a fresh buffer tagged `seq`; report
    /// with [`ReaderEvent::ReadDone`].
    ReadAt {
        /// Tag of the read.
        seq: Seq,
        /// File offset.
        offset: u64,
        /// Bytes to read.
        len: u32,
    },
    /// Stream read of up to `len` bytes into a fresh buffer tagged `seq`; report with
    /// [`ReaderEvent::ReadDone`].
    Read {
        /// Tag of the read.
        seq: Seq,
        /// Most bytes to read.
        len: u32,
    },
    /// Arm one multishot read (buffers of `len` bytes from the provided-buffer ring); report
    /// each of its completions with [`ReaderEvent::MultishotDone`]. After `ENOBUFS` this
    /// comes again at once: a driver whose ring is still empty should hold the submission
    /// until a buffer is returned, or the kernel answers `ENOBUFS` straight away again.
    ReadMultishot {
        /// Tag of the multishot read.
        seq: Seq,
        /// Size of each provided buffer.
        len: u32,
    },
    /// The stream had no data (`EAGAIN`): arm one one-shot readiness poll (`POLLIN`); report
    /// with [`ReaderEvent::PollDone`].
    PollReadable {
        /// Tag of the poll.
        seq: Seq,
    },
    /// Cancel operation `seq` (`IORING_OP_ASYNC_CANCEL`). Its own completion must still be
    /// reported, whatever its result.
    Cancel {
        /// The operation to cancel.
        seq: Seq,
    },
    /// Hand the bytes to `on_read`, then report [`ReaderEvent::Delivered`].
    Deliver(Delivery),
    /// Release the buffer of read `seq` (or provided buffer `buf_id`) without delivering it.
    Discard {
        /// The read (or multishot read) whose buffer is released.
        seq: Seq,
        /// For multishot reads, the provided buffer to give back.
        buf_id: Option<u16>,
    },
    /// Reads failed; every Deliver has been acknowledged and nothing is in flight. Run
    /// `on_failed`, then report its decision with [`ReaderEvent::Restart`]. Emitted once
    /// per failure.
    Failed(Error),
    /// The reader is over: nothing in flight, every delivery acknowledged. The last action.
    Finished(FinishReason),
}

/// What happened; feed it to [`ReaderMachine::handle`](crate::reader::ReaderMachine::handle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderEvent {
    /// A `ReadAt` or `Read` completed.
    ReadDone {
        /// The read's tag.
        seq: Seq,
        /// Bytes read, or the error.
        result: Result<u32, Error>,
    },
    /// One completion of a multishot read.
    MultishotDone {
        /// The multishot read's tag.
        seq: Seq,
        /// Bytes read, or the error (`ENOBUFS` when the provided-buffer ring was empty).
        result: Result<u32, Error>,
        /// The provided buffer used (`IORING_CQE_F_BUFFER`), if any.
        buf_id: Option<u16>,
        /// `IORING_CQE_F_MORE`: the multishot read stays armed.
        more: bool,
    },
    /// A readiness poll completed.
    PollDone {
        /// The poll's tag.
        seq: Seq,
        /// The ready mask, or the error.
        result: Result<u32, Error>,
    },
    /// `on_read` for this delivery returned.
    Delivered {
        /// The delivery's `seq`.
        seq: Seq,
    },
    /// The user's answer to [`ReaderAction::Failed`].
    Restart(Restart),
    /// Cancel the reader (same as [`ReaderMachine::cancel`](crate::reader::ReaderMachine::cancel)).
    Cancel,
}

/// Counters, for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Reads (and multishot arms) issued.
    pub reads_issued: u64,
    /// Deliver actions emitted.
    pub deliveries: u64,
    /// Bytes delivered.
    pub bytes_delivered: u64,
    /// Discard actions emitted.
    pub discards: u64,
    /// Readiness polls issued after `EAGAIN`.
    pub readiness_waits: u64,
    /// Failed actions emitted.
    pub failures: u64,
    /// Restarts after a failure.
    pub restarts: u64,
}
