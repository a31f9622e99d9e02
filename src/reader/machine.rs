//! The continuous reader's state machine (sans-I/O).

use std::collections::VecDeque;

use crate::error::{Error, ErrorKind, Result};

/// Identifies one operation the machine asked for (a read, a poll, a multishot arm) or one
/// multishot delivery. Unique for the machine's lifetime, never reused.
///
/// The driver keys the buffer it reads into by the read's `Seq`, and puts the `Seq` in the
/// operation's `user_data` (together with its own generation bits) so that the completion
/// can be routed back with [`ReaderEvent::ReadDone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(u64);

impl Seq {
    /// A sequence number from its raw value (for drivers decoding `user_data`, and fuzzers).
    pub const fn new(raw: u64) -> Seq {
        Seq(raw)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// What kind of source the reader reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A seekable source (regular file, block device): reads at advancing offsets, up to
    /// `pending_reads` in flight. With direct I/O every offset and length must be a multiple
    /// of `align` (1 = no constraint).
    Positional {
        /// Required alignment of offsets and lengths, in bytes (a power of two).
        align: u32,
    },
    /// A non-seekable source (pipe, socket, tty, character device): no offsets, data order
    /// must be preserved. Single-shot mode keeps exactly one read in flight; multishot mode
    /// keeps one multishot read armed (`IORING_OP_READ_MULTISHOT`), whose completions each
    /// carry a provided-buffer id.
    Stream {
        /// Use one armed multishot read instead of single-shot reads.
        multishot: bool,
    },
}

/// Configuration of a continuous reader. Build it with [`ReaderConfig::positional`] or
/// [`ReaderConfig::stream`] and the setters; it is validated by [`ReaderConfig::validate`]
/// (called by [`ReaderMachine::new`]), which returns a typed [`Error`] for impossible
/// combinations.
///
/// ```
/// use iocomplete::reader::ReaderConfig;
/// use iocomplete::ErrorKind;
///
/// let ok = ReaderConfig::positional(64 * 1024).align(4096).pending_reads(8).range(0, 1 << 20);
/// assert!(ok.validate().is_ok());
///
/// let bad = ReaderConfig::positional(64 * 1024).align(4096).range(100, 1 << 20);
/// assert!(matches!(
///     bad.validate().unwrap_err().kind(),
///     ErrorKind::Misaligned { what: "offset", value: 100, align: 4096 }
/// ));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderConfig {
    positional: bool,
    align: u32,
    multishot: bool,
    transfer_len: u32,
    pending_reads: u32,
    start: u64,
    end: Option<u64>,
    ordered: bool,
    reorder_window: Option<u32>,
    max_unacked: u32,
}

impl ReaderConfig {
    /// Default number of reads kept in flight for positional sources.
    pub const DEFAULT_PENDING_READS: u32 = 2;
    /// Default bound on deliveries awaiting [`ReaderEvent::Delivered`].
    pub const DEFAULT_MAX_UNACKED: u32 = 64;
    /// Largest accepted `pending_reads` (io_uring's largest submission queue).
    pub const MAX_PENDING_READS: u32 = 32 * 1024;
    /// Largest accepted `reorder_window` and `max_unacked`.
    pub const MAX_WINDOW: u32 = 64 * 1024;

    fn base(positional: bool, transfer_len: u32) -> ReaderConfig {
        ReaderConfig {
            positional,
            align: 1,
            multishot: false,
            transfer_len,
            pending_reads: Self::DEFAULT_PENDING_READS,
            start: 0,
            end: None,
            ordered: false,
            reorder_window: None,
            max_unacked: Self::DEFAULT_MAX_UNACKED,
        }
    }

    /// A reader of a seekable source, `transfer_len` bytes per read, from offset 0 to EOF.
    pub fn positional(transfer_len: u32) -> ReaderConfig {
        Self::base(true, transfer_len)
    }

    /// A reader of a non-seekable source, up to `transfer_len` bytes per read.
    pub fn stream(transfer_len: u32) -> ReaderConfig {
        Self::base(false, transfer_len)
    }

    /// A reader of the given kind of source.
    pub fn new(source: SourceKind, transfer_len: u32) -> ReaderConfig {
        match source {
            SourceKind::Positional { align } => Self::positional(transfer_len).align(align),
            SourceKind::Stream { multishot } => Self::stream(transfer_len).multishot(multishot),
        }
    }

    /// Direct-I/O alignment (positional sources only): every offset and length must be a
    /// multiple of it. Default 1.
    pub fn align(mut self, align: u32) -> ReaderConfig {
        self.align = align;
        self
    }

    /// Use one armed multishot read (stream sources only). Default off.
    pub fn multishot(mut self, on: bool) -> ReaderConfig {
        self.multishot = on;
        self
    }

    /// Reads kept in flight (positional sources; streams always have one). Default 2.
    pub fn pending_reads(mut self, n: u32) -> ReaderConfig {
        self.pending_reads = n;
        self
    }

    /// Read only the bytes in `[start, end)` (positional sources only).
    pub fn range(mut self, start: u64, end: u64) -> ReaderConfig {
        self.start = start;
        self.end = Some(end);
        self
    }

    /// Start reading at `offset` and continue to EOF (positional sources only).
    pub fn start_at(mut self, offset: u64) -> ReaderConfig {
        self.start = offset;
        self.end = None;
        self
    }

    /// Deliver in file order through a bounded reorder window instead of completion order.
    /// Default off. Streams are always delivered in order, so this changes nothing for them.
    pub fn ordered(mut self, on: bool) -> ReaderConfig {
        self.ordered = on;
        self
    }

    /// In ordered mode, the most reads whose buffers may be in flight or held back waiting
    /// for an earlier offset (default `2 * pending_reads`; at least `pending_reads`).
    pub fn reorder_window(mut self, reads: u32) -> ReaderConfig {
        self.reorder_window = Some(reads);
        self
    }

    /// The most deliveries that may await [`ReaderEvent::Delivered`]; at the bound the
    /// reader stops issuing reads until one is acknowledged (back-pressure). Default 64.
    pub fn max_unacked(mut self, n: u32) -> ReaderConfig {
        self.max_unacked = n;
        self
    }

    /// The kind of source.
    pub fn source(&self) -> SourceKind {
        if self.positional {
            SourceKind::Positional { align: self.align }
        } else {
            SourceKind::Stream {
                multishot: self.multishot,
            }
        }
    }

    /// Bytes per read.
    pub fn transfer_len(&self) -> u32 {
        self.transfer_len
    }

    /// Reads kept in flight (1 for streams, whatever was configured).
    pub fn effective_pending_reads(&self) -> u32 {
        if self.positional {
            self.pending_reads
        } else {
            1
        }
    }

    /// First offset read.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// End of the range, if one was given.
    pub fn end(&self) -> Option<u64> {
        self.end
    }

    /// Whether delivery is in file order.
    pub fn is_ordered(&self) -> bool {
        self.ordered
    }

    /// The reorder window in effect (see [`ReaderConfig::reorder_window`]).
    pub fn effective_reorder_window(&self) -> u32 {
        self.reorder_window
            .unwrap_or_else(|| self.pending_reads.saturating_mul(2))
    }

    /// The bound on unacknowledged deliveries.
    pub fn max_unacked_deliveries(&self) -> u32 {
        self.max_unacked
    }

    /// Check the configuration; [`ReaderMachine::new`] calls this.
    pub fn validate(&self) -> Result<()> {
        if self.transfer_len == 0 {
            return Err(Error::zero_length("read (transfer_len)"));
        }
        if self.transfer_len > i32::MAX as u32 {
            // i32::MAX: the largest read a completion can report.
            return Err(Error::out_of_range("transfer_len", 1, i32::MAX as u64));
        }
        if self.pending_reads == 0 || self.pending_reads > Self::MAX_PENDING_READS {
            return Err(Error::out_of_range(
                "pending_reads",
                1,
                Self::MAX_PENDING_READS.into(),
            ));
        }
        if self.max_unacked == 0 || self.max_unacked > Self::MAX_WINDOW {
            return Err(Error::out_of_range(
                "max_unacked",
                1,
                Self::MAX_WINDOW.into(),
            ));
        }
        if let Some(end) = self.end {
            if self.start > end {
                return Err(Error::invalid("range start is after range end"));
            }
        }
        if self.positional {
            if self.multishot {
                return Err(Error::invalid("multishot reads need a stream source"));
            }
            if !self.align.is_power_of_two() {
                return Err(Error::new(ErrorKind::NotPowerOfTwo {
                    what: "alignment",
                    value: self.align.into(),
                }));
            }
            let misaligned = |what, value: u64| {
                Error::new(ErrorKind::Misaligned {
                    what,
                    value,
                    align: self.align,
                })
            };
            let mask = u64::from(self.align) - 1;
            if u64::from(self.transfer_len) & mask != 0 {
                return Err(misaligned("length", u64::from(self.transfer_len)));
            }
            if self.start & mask != 0 {
                return Err(misaligned("offset", self.start));
            }
            if let Some(end) = self.end {
                if end & mask != 0 {
                    return Err(misaligned("offset", end));
                }
            }
            if self.ordered {
                let w = self.effective_reorder_window();
                if w < self.pending_reads || w > Self::MAX_WINDOW {
                    return Err(Error::out_of_range(
                        "reorder_window",
                        self.pending_reads,
                        Self::MAX_WINDOW.into(),
                    ));
                }
            }
        } else {
            if self.align != 1 {
                return Err(Error::invalid(
                    "alignment applies to positional sources only",
                ));
            }
            if self.start != 0 || self.end.is_some() {
                return Err(Error::invalid("a byte range needs a positional source"));
            }
        }
        Ok(())
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
    /// [`ReaderMachine::stop`] was called.
    Stopped,
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

/// What the driver must do next. Pull them with [`ReaderMachine::poll_action`] and execute
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
    /// each of its completions with [`ReaderEvent::MultishotDone`]. After `-ENOBUFS` this
    /// comes again at once: a driver whose ring is still empty should hold the submission
    /// until a buffer is returned, or the kernel answers `-ENOBUFS` straight away again.
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

/// What happened; feed it to [`ReaderMachine::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderEvent {
    /// A `ReadAt` or `Read` completed; `res` is the CQE result (bytes, or `-errno`).
    ReadDone {
        /// The read's tag.
        seq: Seq,
        /// Bytes read, or a negated errno.
        res: i32,
    },
    /// One completion of a multishot read.
    MultishotDone {
        /// The multishot read's tag.
        seq: Seq,
        /// Bytes read, or a negated errno (`-ENOBUFS` when the provided-buffer ring was
        /// empty).
        res: i32,
        /// The provided buffer used (`IORING_CQE_F_BUFFER`), if any.
        buf_id: Option<u16>,
        /// `IORING_CQE_F_MORE`: the multishot read stays armed.
        more: bool,
    },
    /// A readiness poll completed; `res` is the event mask, or `-errno`.
    PollDone {
        /// The poll's tag.
        seq: Seq,
        /// Poll mask, or a negated errno.
        res: i32,
    },
    /// `on_read` for this delivery returned.
    Delivered {
        /// The delivery's `seq`.
        seq: Seq,
    },
    /// The user's answer to [`ReaderAction::Failed`].
    Restart(Restart),
    /// Stop the reader (same as [`ReaderMachine::stop`]).
    Stop,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    ReadAt { offset: u64, len: u32 },
    Read { len: u32 },
    Multishot { len: u32 },
    Poll,
}

#[derive(Debug, Clone, Copy)]
struct Op {
    seq: Seq,
    kind: OpKind,
    /// A Cancel action was emitted for it.
    cancelling: bool,
}

/// A byte range `[offset, offset + len)`.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    len: u64,
}

/// A completed read held back (ordered mode) until the bytes before it are delivered.
#[derive(Debug, Clone, Copy)]
struct Held {
    seq: Seq,
    offset: u64,
    len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Issuing reads; ends by itself at EOF or end of range.
    Running,
    /// A read failed at file offset (or stream position) `at`: no new reads, draining.
    Failing { error: Error, at: u64 },
    /// `Failed` was emitted; waiting for [`ReaderEvent::Restart`].
    AwaitingRestart { error: Error },
    /// `stop()` was called: cancels emitted, waiting for completions and acks.
    Stopping,
    /// `Finished` was emitted.
    Done,
}

/// The continuous reader's sans-I/O core.
///
/// Feed events with [`handle`](Self::handle), pull actions with
/// [`poll_action`](Self::poll_action). The machine never blocks, makes no syscalls, and
/// after construction performs no heap allocation in steady state (its queues are sized from
/// the configuration). It is total: any event sequence is accepted or rejected with an
/// error (unknown `seq`, duplicate completion, decision nobody asked for), never a panic;
/// a rejected event changes nothing.
///
/// # Behaviour
///
/// * Up to `pending_reads` reads are in flight (positional), exactly one (stream), or one
///   armed multishot read. Each successful completion yields a [`ReaderAction::Deliver`]
///   and a new read at once, until stop, EOF (a 0-byte read) or the end of the range.
/// * A short positional read is delivered and the rest of its range re-read: no byte is
///   delivered twice or skipped. With direct I/O (`align > 1`) a short read that is not a
///   multiple of `align` marks the end of the file (the kernel only returns one at EOF).
/// * `EAGAIN` on a stream: one [`ReaderAction::PollReadable`], then a new read.
/// * Multishot: a completion without `more`, or `-ENOBUFS`, re-arms the read.
/// * Error: no new reads; in-flight reads drain — those before the failure point are
///   delivered, those after it discarded and re-read on restart — then exactly one
///   [`ReaderAction::Failed`]. [`Restart::Yes`] resumes where delivery stopped,
///   [`Restart::No`] ends with [`FinishReason::Failed`].
/// * [`stop`](Self::stop): a [`ReaderAction::Cancel`] per operation in flight, then
///   `Finished(Stopped)` once all completions are back and deliveries acknowledged. Data
///   that still arrives is delivered (for a stream it would otherwise be lost) unless
///   ordering forbids it, in which case it is discarded.
/// * Every single-shot read ends in exactly one `Deliver` or `Discard` of its `seq`; every
///   multishot completion carrying a buffer id in exactly one `Deliver` or `Discard` of
///   that id.
///
/// # Invariant: `Failed` never overlaps a delivery
///
/// `Failed` (and `Finished`) is never emitted while a `Deliver` of this reader is
/// outstanding: the driver acknowledges each `Deliver` with [`ReaderEvent::Delivered`] once
/// `on_read` has returned — on whichever thread it ran — and the machine holds `Failed`
/// back until every one is acknowledged. This is how `on_failed` never runs at the same time
/// as `on_read` for one reader, while `on_read` itself may run on several threads at once.
/// The same acknowledgements bound the deliveries in the user's hands
/// ([`ReaderConfig::max_unacked`]).
#[derive(Debug)]
pub struct ReaderMachine {
    cfg: ReaderConfig,
    phase: Phase,
    next_seq: u64,
    /// Operations handed to the driver whose completion has not come back.
    ops: Vec<Op>,
    /// Ranges below `cursor` that must be (re-)read: short-read tails, failed and discarded
    /// reads. Positional only.
    holes: Vec<Span>,
    /// Ordered mode: completed reads waiting for `deliver_next` to reach them.
    held: Vec<Held>,
    /// Deliveries not yet acknowledged.
    unacked: Vec<Seq>,
    actions: VecDeque<ReaderAction>,
    /// Positional: next offset never issued. Stream: bytes delivered so far.
    cursor: u64,
    /// Ordered mode: every byte below it has been delivered.
    deliver_next: u64,
    /// Positional: a read returned 0 bytes (or a direct-I/O read ended unaligned) here.
    eof_at: Option<u64>,
    /// Stream: a read returned 0 bytes.
    stream_eof: bool,
    window: usize,
    stats: ReaderStats,
}

impl ReaderMachine {
    /// A reader in its initial state; its first reads are ready in
    /// [`poll_action`](Self::poll_action). Fails if the configuration is invalid.
    pub fn new(cfg: ReaderConfig) -> Result<ReaderMachine> {
        cfg.validate()?;
        let pending = cfg.effective_pending_reads() as usize;
        let window = if cfg.positional && cfg.ordered {
            cfg.effective_reorder_window() as usize
        } else {
            pending
        };
        let max_unacked = cfg.max_unacked as usize;
        let mut m = ReaderMachine {
            cfg,
            phase: Phase::Running,
            next_seq: 0,
            ops: Vec::with_capacity(pending.max(2)),
            holes: Vec::with_capacity(if cfg.positional {
                window + pending + 1
            } else {
                0
            }),
            held: Vec::with_capacity(if cfg.positional && cfg.ordered {
                window + pending
            } else {
                0
            }),
            unacked: Vec::with_capacity(max_unacked + pending),
            actions: VecDeque::with_capacity(2 * (window + pending) + max_unacked + 8),
            cursor: cfg.start,
            deliver_next: cfg.start,
            eof_at: None,
            stream_eof: false,
            window,
            stats: ReaderStats::default(),
        };
        m.pump();
        Ok(m)
    }

    /// The configuration.
    pub fn config(&self) -> &ReaderConfig {
        &self.cfg
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<ReaderAction> {
        self.actions.pop_front()
    }

    /// Operations (reads, polls, multishot reads) whose completion has not come back.
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Deliveries not yet acknowledged with [`ReaderEvent::Delivered`].
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// True once [`ReaderAction::Finished`] has been emitted.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Done
    }

    /// True between [`ReaderAction::Failed`] and the [`ReaderEvent::Restart`] answer.
    pub fn awaits_restart(&self) -> bool {
        matches!(self.phase, Phase::AwaitingRestart { .. })
    }

    /// Counters so far.
    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// Switch a stream reader between multishot and single-shot reads, from the next read
    /// it issues (an operation in flight keeps its kind). For a driver that learns only
    /// while reading what the source supports (see [`ContinuousReader`]'s
    /// `StreamReads`). Refused for positional sources, and changes nothing then.
    ///
    /// [`ContinuousReader`]: crate::ContinuousReader
    pub fn set_multishot(&mut self, on: bool) -> Result<()> {
        if self.cfg.positional {
            return Err(Error::invalid("multishot reads need a stream source"));
        }
        self.cfg.multishot = on;
        Ok(())
    }

    /// Stop the reader: cancel what is in flight, finish with [`FinishReason::Stopped`]
    /// once everything is back. Idempotent; does nothing once finished.
    pub fn stop(&mut self) {
        match self.phase {
            Phase::Running | Phase::Failing { .. } => {
                self.phase = Phase::Stopping;
                for op in &mut self.ops {
                    if !op.cancelling {
                        op.cancelling = true;
                        self.actions.push_back(ReaderAction::Cancel { seq: op.seq });
                    }
                }
            }
            Phase::AwaitingRestart { .. } => self.phase = Phase::Stopping,
            Phase::Stopping | Phase::Done => {}
        }
        self.pump();
    }

    /// Feed one event. An impossible event is rejected and changes nothing:
    /// [`ErrorKind::NotInProgress`] for an unknown or stale `seq` or a restart decision
    /// nobody asked for, [`ErrorKind::ExcessBytes`] for a result larger than the read,
    /// [`ErrorKind::EventMismatch`] for an event of the wrong kind for its operation,
    /// [`ErrorKind::InvalidInput`] for a multishot data completion without a buffer id.
    pub fn handle(&mut self, event: ReaderEvent) -> Result<()> {
        match event {
            ReaderEvent::ReadDone { seq, res } => self.on_read_done(seq, res)?,
            ReaderEvent::MultishotDone {
                seq,
                res,
                buf_id,
                more,
            } => self.on_multishot(seq, res, buf_id, more)?,
            ReaderEvent::PollDone { seq, res } => self.on_poll_done(seq, res)?,
            ReaderEvent::Delivered { seq } => {
                let i = self
                    .unacked
                    .iter()
                    .position(|&s| s == seq)
                    .ok_or(Error::not_in_progress("delivery awaiting acknowledgement"))?;
                self.unacked.swap_remove(i);
            }
            ReaderEvent::Restart(decision) => {
                let Phase::AwaitingRestart { error } = self.phase else {
                    return Err(Error::not_in_progress(
                        "failure awaiting a restart decision",
                    ));
                };
                match decision {
                    Restart::Yes => {
                        self.stats.restarts += 1;
                        self.phase = Phase::Running;
                    }
                    Restart::No => self.finish(FinishReason::Failed(error)),
                }
            }
            ReaderEvent::Stop => self.stop(),
        }
        self.pump();
        Ok(())
    }

    // ---- event handlers -------------------------------------------------------------

    fn find_op(&self, seq: Seq) -> Result<usize> {
        self.ops
            .iter()
            .position(|op| op.seq == seq)
            .ok_or(Error::not_in_progress("operation"))
    }

    fn on_read_done(&mut self, seq: Seq, res: i32) -> Result<()> {
        let i = self.find_op(seq)?;
        let op = self.ops[i];
        match op.kind {
            OpKind::ReadAt { offset, len } => {
                if res > 0 && res as u32 > len {
                    return Err(Error::new(ErrorKind::ExcessBytes));
                }
                self.ops.swap_remove(i);
                self.positional_done(seq, offset, len, res);
            }
            OpKind::Read { len } => {
                if res > 0 && res as u32 > len {
                    return Err(Error::new(ErrorKind::ExcessBytes));
                }
                self.ops.swap_remove(i);
                self.stream_done(seq, res);
            }
            OpKind::Multishot { .. } | OpKind::Poll => {
                return Err(Error::new(ErrorKind::EventMismatch));
            }
        }
        Ok(())
    }

    fn positional_done(&mut self, seq: Seq, offset: u64, len: u32, res: i32) {
        if res < 0 {
            self.discard(seq, None);
            let errno = crate::error::errno_of(res);
            if errno == libc::EINTR {
                self.add_hole(offset, u64::from(len));
                return;
            }
            match self.phase {
                Phase::Running => {
                    self.add_hole(offset, u64::from(len));
                    self.enter_failing(Error::from_errno(errno), offset);
                }
                Phase::Failing { error, at } => {
                    self.add_hole(offset, u64::from(len));
                    if offset < at {
                        self.phase = Phase::Failing { error, at: offset };
                        self.discard_held_from(offset, true);
                    }
                }
                // Stopping: errors of cancelled reads are expected; nothing to report.
                Phase::Stopping | Phase::AwaitingRestart { .. } | Phase::Done => {}
            }
            return;
        }
        if res == 0 {
            self.discard(seq, None);
            self.set_eof(offset);
            return;
        }
        let mut n = res as u32;
        if let Phase::Failing { at, .. } = self.phase {
            if offset >= at {
                // After the failure point: re-read on restart.
                self.discard(seq, None);
                self.add_hole(offset, u64::from(len));
                return;
            }
        }
        if let Some(eof) = self.eof_at {
            if offset >= eof {
                self.discard(seq, None);
                return;
            }
            // Data past a known EOF (the file changed size): keep the bytes before it.
            n = n.min(u32::try_from(eof - offset).unwrap_or(u32::MAX));
        }
        if n < len {
            let align = self.cfg.align;
            if align > 1 && n % align != 0 {
                self.set_eof(offset + u64::from(n));
            } else {
                self.add_hole(offset + u64::from(n), u64::from(len - n));
            }
        }
        self.deliver_or_hold(seq, offset, n);
    }

    fn stream_done(&mut self, seq: Seq, res: i32) {
        if res > 0 {
            if matches!(self.phase, Phase::Failing { .. }) {
                self.discard(seq, None);
            } else {
                self.deliver_stream(seq, res as u32, None);
            }
            return;
        }
        self.discard(seq, None);
        if res == 0 {
            self.stream_eof = true;
            return;
        }
        self.stream_error(crate::error::errno_of(res));
    }

    /// A stream read (single-shot or multishot, already ended) failed with `errno`.
    fn stream_error(&mut self, errno: i32) {
        if self.phase != Phase::Running {
            return;
        }
        match errno {
            libc::EAGAIN => self.issue(OpKind::Poll),
            libc::EINTR | libc::ENOBUFS => {} // pump re-arms
            _ => {
                let at = self.cursor;
                self.enter_failing(Error::from_errno(errno), at);
            }
        }
    }

    fn on_multishot(&mut self, seq: Seq, res: i32, buf_id: Option<u16>, more: bool) -> Result<()> {
        let i = self.find_op(seq)?;
        let OpKind::Multishot { len } = self.ops[i].kind else {
            return Err(Error::new(ErrorKind::EventMismatch));
        };
        if res > 0 && res as u32 > len {
            return Err(Error::new(ErrorKind::ExcessBytes));
        }
        if res > 0 && buf_id.is_none() {
            return Err(Error::invalid(
                "multishot data completion without a buffer id",
            ));
        }
        let cancelling = self.ops[i].cancelling;
        if !more {
            self.ops.swap_remove(i);
        }
        if res > 0 {
            if matches!(self.phase, Phase::Failing { .. }) {
                self.discard(seq, buf_id);
            } else {
                self.deliver_stream(seq, res as u32, buf_id);
            }
            return Ok(());
        }
        if buf_id.is_some() {
            self.discard(seq, buf_id);
        }
        if res == 0 {
            self.stream_eof = true;
            self.cancel_if_armed(i, more);
            return Ok(());
        }
        let errno = crate::error::errno_of(res);
        if cancelling {
            // We cancelled it (stop, EOF, or an earlier error): its errors mean nothing.
            return Ok(());
        }
        if more {
            // The kernel ends a multishot read on any error; if it says otherwise, only a
            // hard error needs acting on: cancel it and let the final completion re-arm.
            if !matches!(errno, libc::ENOBUFS | libc::EAGAIN | libc::EINTR) {
                self.cancel_if_armed(i, more);
                self.stream_error(errno);
            }
        } else {
            self.stream_error(errno);
        }
        Ok(())
    }

    fn cancel_if_armed(&mut self, i: usize, more: bool) {
        if more && !self.ops[i].cancelling {
            self.ops[i].cancelling = true;
            let seq = self.ops[i].seq;
            self.actions.push_back(ReaderAction::Cancel { seq });
        }
    }

    fn on_poll_done(&mut self, seq: Seq, res: i32) -> Result<()> {
        let i = self.find_op(seq)?;
        if self.ops[i].kind != OpKind::Poll {
            return Err(Error::new(ErrorKind::EventMismatch));
        }
        self.ops.swap_remove(i);
        if res < 0 {
            let errno = crate::error::errno_of(res);
            if self.phase == Phase::Running && errno != libc::EINTR {
                let at = self.cursor;
                self.enter_failing(Error::from_errno(errno), at);
            }
        }
        // Readable, hung up or in error: the next read tells which (pump issues it).
        Ok(())
    }

    // ---- helpers ----------------------------------------------------------------------

    fn alloc_seq(&mut self) -> Seq {
        let s = Seq(self.next_seq);
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    fn issue(&mut self, kind: OpKind) {
        let seq = self.alloc_seq();
        self.ops.push(Op {
            seq,
            kind,
            cancelling: false,
        });
        let action = match kind {
            OpKind::ReadAt { offset, len } => ReaderAction::ReadAt { seq, offset, len },
            OpKind::Read { len } => ReaderAction::Read { seq, len },
            OpKind::Multishot { len } => ReaderAction::ReadMultishot { seq, len },
            OpKind::Poll => {
                self.stats.readiness_waits += 1;
                self.actions.push_back(ReaderAction::PollReadable { seq });
                return;
            }
        };
        self.stats.reads_issued += 1;
        self.actions.push_back(action);
    }

    fn discard(&mut self, seq: Seq, buf_id: Option<u16>) {
        self.stats.discards += 1;
        self.actions
            .push_back(ReaderAction::Discard { seq, buf_id });
    }

    fn deliver(&mut self, seq: Seq, offset: u64, len: u32, buf_id: Option<u16>) {
        self.stats.deliveries += 1;
        self.stats.bytes_delivered += u64::from(len);
        self.unacked.push(seq);
        self.actions.push_back(ReaderAction::Deliver(Delivery {
            seq,
            offset,
            len,
            buf_id,
        }));
    }

    fn deliver_stream(&mut self, seq: Seq, n: u32, buf_id: Option<u16>) {
        // Multishot completions share the read's seq; give each delivery its own.
        let dseq = if buf_id.is_some() {
            self.alloc_seq()
        } else {
            seq
        };
        let offset = self.cursor;
        self.cursor = self.cursor.saturating_add(u64::from(n));
        self.deliver(dseq, offset, n, buf_id);
    }

    fn deliver_or_hold(&mut self, seq: Seq, offset: u64, n: u32) {
        if !self.cfg.ordered {
            self.deliver(seq, offset, n, None);
            return;
        }
        if offset < self.deliver_next {
            // Cannot happen (ranges are disjoint); never deliver out of order.
            self.discard(seq, None);
            return;
        }
        if offset != self.deliver_next {
            self.held.push(Held {
                seq,
                offset,
                len: n,
            });
            return;
        }
        self.deliver(seq, offset, n, None);
        self.deliver_next = offset + u64::from(n);
        while let Some(i) = self.held.iter().position(|h| h.offset == self.deliver_next) {
            let h = self.held.swap_remove(i);
            self.deliver(h.seq, h.offset, h.len, None);
            self.deliver_next = h.offset + u64::from(h.len);
        }
    }

    fn add_hole(&mut self, offset: u64, len: u64) {
        if len > 0 {
            self.holes.push(Span { offset, len });
        }
    }

    /// Discard held reads at or after `from`; `rearm` keeps their ranges for a restart.
    fn discard_held_from(&mut self, from: u64, rearm: bool) {
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].offset >= from {
                let h = self.held.swap_remove(i);
                self.discard(h.seq, None);
                if rearm {
                    self.add_hole(h.offset, u64::from(h.len));
                }
            } else {
                i += 1;
            }
        }
    }

    fn set_eof(&mut self, at: u64) {
        let eof = self.eof_at.map_or(at, |e| e.min(at));
        self.eof_at = Some(eof);
        self.holes.retain(|h| h.offset < eof);
        self.discard_held_from(eof, false);
    }

    fn enter_failing(&mut self, error: Error, at: u64) {
        self.phase = Phase::Failing { error, at };
        self.discard_held_from(at, true);
    }

    fn finish(&mut self, reason: FinishReason) {
        self.discard_held_from(0, false);
        self.phase = Phase::Done;
        self.actions.push_back(ReaderAction::Finished(reason));
    }

    /// `n` rounded up to the direct-I/O alignment.
    fn round_to_align(&self, n: u64) -> u64 {
        let a = u64::from(self.cfg.align.max(1));
        n.div_ceil(a).saturating_mul(a)
    }

    /// Positional: where reading must stop — the range's end, end of file once seen, and
    /// at most the largest file position (`i64::MAX`, rounded down to the alignment), so
    /// a range that runs that far ends there instead of asking the kernel for more.
    fn limit(&self) -> u64 {
        let a = u64::from(self.cfg.align.max(1));
        let max_pos = i64::MAX as u64 - (i64::MAX as u64) % a;
        let end = self.cfg.end.unwrap_or(u64::MAX).min(max_pos);
        self.eof_at.map_or(end, |e| e.min(end))
    }

    /// Issue what can be issued, and emit `Failed`/`Finished` when their time has come.
    fn pump(&mut self) {
        match self.phase {
            Phase::Running => {
                if self.cfg.positional {
                    self.issue_positional();
                } else {
                    self.issue_stream();
                }
                if self.ops.is_empty() && self.unacked.is_empty() {
                    if self.cfg.positional {
                        if self.holes.is_empty() && self.cursor >= self.limit() {
                            let reason = if self.eof_at.is_some() {
                                FinishReason::Eof
                            } else {
                                FinishReason::EndOfRange
                            };
                            self.finish(reason);
                        }
                    } else if self.stream_eof {
                        self.finish(FinishReason::Eof);
                    }
                }
            }
            Phase::Failing { error, .. } => {
                if self.ops.is_empty() && self.unacked.is_empty() {
                    // Whatever is still held sits behind a gap that will be re-read.
                    self.discard_held_from(0, true);
                    self.stats.failures += 1;
                    self.phase = Phase::AwaitingRestart { error };
                    self.actions.push_back(ReaderAction::Failed(error));
                }
            }
            Phase::Stopping => {
                if self.ops.is_empty() && self.unacked.is_empty() {
                    self.finish(FinishReason::Stopped);
                }
            }
            Phase::AwaitingRestart { .. } | Phase::Done => {}
        }
    }

    fn issue_stream(&mut self) {
        if !self.ops.is_empty()
            || self.stream_eof
            || self.unacked.len() >= self.cfg.max_unacked as usize
        {
            return;
        }
        let len = self.cfg.transfer_len;
        if self.cfg.multishot {
            self.issue(OpKind::Multishot { len });
        } else {
            self.issue(OpKind::Read { len });
        }
    }

    fn issue_positional(&mut self) {
        let pending = self.cfg.pending_reads as usize;
        if self.unacked.len() >= self.cfg.max_unacked as usize {
            return;
        }
        let limit = self.limit();
        while self.ops.len() < pending {
            let window_full = self.cfg.ordered && self.ops.len() + self.held.len() >= self.window;
            // Lowest hole first: it unblocks ordered delivery soonest.
            let lowest = self
                .holes
                .iter()
                .enumerate()
                .min_by_key(|(_, h)| h.offset)
                .map(|(i, h)| (i, *h));
            if let Some((i, hole)) = lowest {
                if window_full && hole.offset != self.deliver_next {
                    break;
                }
                self.holes.swap_remove(i);
                if hole.offset >= limit {
                    continue;
                }
                // Kept a multiple of the alignment: a hole clipped at an unaligned EOF
                // (e.g. a held buffer re-armed on restart) is read whole-block, and a
                // direct read past the end just comes back short.
                let len = self.round_to_align(hole.len.min(limit - hole.offset));
                // A hole is never longer than one read.
                let len = u32::try_from(len).unwrap_or(self.cfg.transfer_len);
                self.issue(OpKind::ReadAt {
                    offset: hole.offset,
                    len,
                });
                continue;
            }
            if self.cursor >= limit || window_full {
                break;
            }
            let len =
                u64::from(self.cfg.transfer_len).min(self.round_to_align(limit - self.cursor));
            let offset = self.cursor;
            self.cursor += len;
            self.issue(OpKind::ReadAt {
                offset,
                len: len as u32,
            });
        }
    }
}
