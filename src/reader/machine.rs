//! The continuous reader's state machine (sans-I/O): its state, the event dispatch and the
//! phases (running, failing, awaiting a restart, cancelling, done). Positional reads
//! (holes, ordering window, end of file) are in `positional`, stream and multishot reads
//! in `stream`.

use std::collections::VecDeque;

use super::config::ReaderConfig;
use super::events::{Delivery, FinishReason, ReaderAction, ReaderEvent, ReaderStats, Restart, Seq};
use crate::error::{Error, ErrorKind, Result};

mod positional;
mod stream;

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
    /// `cancel()` was called: cancels emitted, waiting for completions and acks.
    Cancelling,
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
///   and a new read at once, until cancelled, EOF (a 0-byte read) or the end of the range.
/// * A short positional read is delivered and the rest of its range re-read: no byte is
///   delivered twice or skipped. With direct I/O (`align > 1`) a short read that is not a
///   multiple of `align` marks the end of the file (the kernel only returns one at EOF).
/// * `EAGAIN` on a stream: one [`ReaderAction::PollReadable`], then a new read.
/// * Multishot: a completion without `more`, or `ENOBUFS`, re-arms the read.
/// * Error: no new reads; in-flight reads drain — those before the failure point are
///   delivered, those after it discarded and re-read on restart — then exactly one
///   [`ReaderAction::Failed`]. [`Restart::Yes`] resumes where delivery stopped,
///   [`Restart::No`] ends with [`FinishReason::Failed`].
/// * [`cancel`](Self::cancel): a [`ReaderAction::Cancel`] per operation in flight, then
///   `Finished(Cancelled)` once all completions are back and deliveries acknowledged. Data
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

    /// Cancel the reader: cancel what is in flight, finish with [`FinishReason::Cancelled`]
    /// once everything is back. Idempotent; does nothing once finished.
    pub fn cancel(&mut self) {
        match self.phase {
            Phase::Running | Phase::Failing { .. } => {
                self.phase = Phase::Cancelling;
                for op in &mut self.ops {
                    if !op.cancelling {
                        op.cancelling = true;
                        self.actions.push_back(ReaderAction::Cancel { seq: op.seq });
                    }
                }
            }
            Phase::AwaitingRestart { .. } => self.phase = Phase::Cancelling,
            Phase::Cancelling | Phase::Done => {}
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
            ReaderEvent::ReadDone { seq, result } => self.on_read_done(seq, result)?,
            ReaderEvent::MultishotDone {
                seq,
                result,
                buf_id,
                more,
            } => self.on_multishot(seq, result, buf_id, more)?,
            ReaderEvent::PollDone { seq, result } => self.on_poll_done(seq, result)?,
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
            ReaderEvent::Cancel => self.cancel(),
        }
        self.pump();
        Ok(())
    }

    fn find_op(&self, seq: Seq) -> Result<usize> {
        self.ops
            .iter()
            .position(|op| op.seq == seq)
            .ok_or(Error::not_in_progress("operation"))
    }

    fn on_read_done(&mut self, seq: Seq, result: Result<u32>) -> Result<()> {
        let i = self.find_op(seq)?;
        let op = self.ops[i];
        let (OpKind::ReadAt { len, .. } | OpKind::Read { len }) = op.kind else {
            return Err(Error::new(ErrorKind::EventMismatch));
        };
        if result.is_ok_and(|n| n > len) {
            return Err(Error::new(ErrorKind::ExcessBytes));
        }
        self.ops.swap_remove(i);
        match op.kind {
            OpKind::ReadAt { offset, len } => self.positional_done(seq, offset, len, result),
            _ => self.stream_done(seq, result),
        }
        Ok(())
    }

    fn alloc_seq(&mut self) -> Seq {
        let s = Seq::new(self.next_seq);
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

    fn enter_failing(&mut self, error: Error, at: u64) {
        self.phase = Phase::Failing { error, at };
        self.discard_held_from(at, true);
    }

    fn finish(&mut self, reason: FinishReason) {
        self.discard_held_from(0, false);
        self.phase = Phase::Done;
        self.actions.push_back(ReaderAction::Finished(reason));
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
            Phase::Cancelling => {
                if self.ops.is_empty() && self.unacked.is_empty() {
                    self.finish(FinishReason::Cancelled);
                }
            }
            Phase::AwaitingRestart { .. } | Phase::Done => {}
        }
    }
}
