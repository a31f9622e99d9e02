//! Deterministic simulated device, for tests and fuzzing only (feature `sim`).
//!
//! It plays the driver's part for the sans-I/O machines: executes their actions against an
//! in-memory source and feeds completions back in a seeded random order, with short
//! transfers, injected errors at chosen offsets, delays, out-of-order acknowledgements and
//! stops. [`run_reader`] and [`run_fifo`] drive a machine to its end, check the invariants
//! after every step and at teardown, and return a report. The same seed gives the same run.
//!
//! This is not a backend: real-device tests still run against real files, pipes and ptys.
//!
//! ```
//! use iocomplete::reader::{FinishReason, ReaderConfig};
//! use iocomplete::sim::{run_reader, SimParams};
//!
//! let params = SimParams { data_len: 10_000, ..SimParams::default() };
//! let report = run_reader(7, ReaderConfig::positional(512).pending_reads(4), &params).unwrap();
//! assert_eq!(report.finish, FinishReason::Eof);
//! assert_eq!(report.bytes_delivered, 10_000);
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::error::Error;
use crate::fifo::{FifoAction, FifoEvent, FifoMachine, FifoOutcome, FifoStatus, OpId, TxnId};
use crate::reader::{
    FinishReason, ReaderAction, ReaderConfig, ReaderEvent, ReaderMachine, Restart, Seq, SourceKind,
};

/// A tiny deterministic PRNG (SplitMix64): fast, seedable, no dependencies.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u32) -> bool {
        self.below(100) < u64::from(pct)
    }
}

/// The content of the simulated source at `offset`: a function of the offset, so that any
/// misplaced, duplicated or corrupted byte is detected.
pub fn pattern(offset: u64) -> u8 {
    let mut z = offset.wrapping_add(0x5851_F42D_4C95_7F2D);
    z = (z ^ (z >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (z >> 56) as u8
}

/// An injected error: an operation whose range covers byte `at` fails with `errno`, the
/// first `times` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Byte offset (file offset, or stream position) that fails.
    pub at: u64,
    /// The errno returned (positive, e.g. `libc::EIO`).
    pub errno: i32,
    /// How many times it fails before the byte reads fine.
    pub times: u32,
}

/// Parameters of a simulated run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimParams {
    /// Bytes in the source (file length, or total bytes the stream produces before closing).
    pub data_len: u64,
    /// Percent of transfers that move fewer bytes than they could.
    pub short_pct: u32,
    /// Largest completion delay, in steps, after an operation is issued.
    pub max_delay: u32,
    /// Percent chance per step that one pending delivery is acknowledged (the rest of the
    /// time other things happen first: deliveries run "on other threads").
    pub ack_pct: u32,
    /// Stream: largest burst of bytes arriving at once.
    pub burst_max: u32,
    /// Stream: percent chance per step that a burst arrives.
    pub burst_pct: u32,
    /// Injected errors.
    pub faults: Vec<Fault>,
    /// Stop the reader at this step (reader runs only).
    pub stop_at_step: Option<u64>,
    /// Answer [`Restart::Yes`] this many times, then [`Restart::No`].
    pub max_restarts: u32,
    /// Multishot: buffers in the provided-buffer ring.
    pub provided_buffers: u16,
    /// Give up (and report a violation: no progress) after this many steps.
    pub max_steps: u64,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            data_len: 64 * 1024,
            short_pct: 20,
            max_delay: 4,
            ack_pct: 50,
            burst_max: 3000,
            burst_pct: 30,
            faults: Vec::new(),
            stop_at_step: None,
            max_restarts: 3,
            provided_buffers: 8,
            max_steps: 1_000_000,
        }
    }
}

/// Why a simulated run did not produce a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimFailure {
    /// The machine rejected the configuration (not a bug: fuzzers skip these).
    InvalidConfig(Error),
    /// An invariant was broken: a bug.
    Violation {
        /// Step at which it was detected.
        step: u64,
        /// What was broken.
        what: String,
    },
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimFailure::InvalidConfig(e) => write!(f, "invalid configuration: {e}"),
            SimFailure::Violation { step, what } => write!(f, "step {step}: {what}"),
        }
    }
}

impl std::error::Error for SimFailure {}

/// What a reader run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderRun {
    /// How the reader finished.
    pub finish: FinishReason,
    /// Bytes delivered (each exactly once).
    pub bytes_delivered: u64,
    /// Deliver actions.
    pub deliveries: u64,
    /// Reads (and multishot arms) issued.
    pub reads_issued: u64,
    /// Failed actions.
    pub failures: u64,
    /// Restarts granted.
    pub restarts: u64,
    /// Readiness polls.
    pub readiness_waits: u64,
    /// Cancel actions.
    pub cancels: u64,
    /// Short transfers the device produced.
    pub short_transfers: u64,
    /// Steps the run took.
    pub steps: u64,
}

/// What a FIFO run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FifoRun {
    /// One outcome per transaction, in order.
    pub outcomes: Vec<FifoOutcome>,
    /// Bytes received over all transactions.
    pub bytes_received: u64,
    /// Reads issued.
    pub reads: u64,
    /// Reads that found the source empty (`EAGAIN`).
    pub eagains: u64,
    /// Readiness polls armed.
    pub polls: u64,
    /// Steps the run took.
    pub steps: u64,
}

/// One transaction for [`run_fifo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FifoTxnSpec {
    /// Bytes to receive (drain mode: buffer capacity).
    pub len: u32,
    /// Drain mode.
    pub drain: bool,
    /// Feed [`FifoEvent::Cancel`] this many steps into the transaction.
    pub cancel_after: Option<u32>,
    /// Feed [`FifoEvent::Deadline`] this many steps into the transaction.
    pub deadline_after: Option<u32>,
}

impl FifoTxnSpec {
    /// A plain receive of `len` bytes.
    pub fn receive(len: u32) -> FifoTxnSpec {
        FifoTxnSpec {
            len,
            drain: false,
            cancel_after: None,
            deadline_after: None,
        }
    }
}

// ---- the simulated source -----------------------------------------------------------------

/// A stream that produces `total` bytes in bursts; some time later the writer closes it.
#[derive(Debug)]
struct Stream {
    total: u64,
    /// Bytes produced so far.
    produced: u64,
    /// Bytes consumed by reads.
    consumed: u64,
    /// The writer has closed its end (after producing everything).
    closed: bool,
}

impl Stream {
    fn new(total: u64) -> Stream {
        Stream {
            total,
            produced: 0,
            consumed: 0,
            closed: false,
        }
    }

    fn avail(&self) -> u64 {
        self.produced - self.consumed
    }

    fn closed(&self) -> bool {
        self.closed
    }

    fn tick(&mut self, rng: &mut Rng, p: &SimParams) {
        if !rng.chance(p.burst_pct.max(1)) {
            return;
        }
        if self.produced < self.total {
            let burst = 1 + rng.below(u64::from(p.burst_max.max(1)));
            self.produced = (self.produced + burst).min(self.total);
        } else {
            self.closed = true;
        }
    }
}

/// Take a fault covering `[at, at + len)`, if one is armed.
fn take_fault(faults: &mut [Fault], at: u64, len: u64) -> Option<i32> {
    let f = faults
        .iter_mut()
        .find(|f| f.times > 0 && f.at >= at && f.at < at.saturating_add(len))?;
    f.times -= 1;
    Some(f.errno)
}

/// How many of `n` available bytes a transfer moves (short transfers, in `align` units).
fn transfer(rng: &mut Rng, p: &SimParams, n: u64, align: u64) -> (u64, bool) {
    if n > align && rng.chance(p.short_pct) {
        let units = n / align;
        if units > 1 {
            return (align * (1 + rng.below(units - 1)), true);
        }
    }
    (n, false)
}

/// Seeds for a randomized test: `default`, or `IOCOMPLETE_SIM_SEEDS` for longer campaigns.
#[cfg(test)]
pub(crate) fn seeds(default: u64) -> std::ops::Range<u64> {
    let n = std::env::var("IOCOMPLETE_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    0..n
}

fn violation(step: u64, what: impl Into<String>) -> SimFailure {
    SimFailure::Violation {
        step,
        what: what.into(),
    }
}

// ---- reader run -----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SimOpKind {
    ReadAt { offset: u64, len: u32 },
    Read { len: u32 },
    Multishot { len: u32 },
    Poll,
}

#[derive(Debug, Clone, Copy)]
struct SimOp {
    seq: Seq,
    kind: SimOpKind,
    ready_at: u64,
    cancel: bool,
}

struct ReaderSim<'a> {
    p: &'a SimParams,
    rng: Rng,
    cfg: ReaderConfig,
    m: ReaderMachine,
    step: u64,
    faults: Vec<Fault>,
    stream: Stream,
    ops: Vec<SimOp>,
    seen_seqs: HashSet<Seq>,
    /// Single-shot reads completed, whose buffer awaits Deliver or Discard: their content.
    buffers: HashMap<Seq, Vec<u8>>,
    /// Provided buffers handed out by multishot completions: their content.
    provided: HashMap<u16, Vec<u8>>,
    free_provided: Vec<u16>,
    /// Deliveries not yet acknowledged, with the provided buffer to recycle at ack.
    pending_acks: Vec<(Seq, Option<u16>)>,
    /// Unordered: how often each byte was delivered. Ordered: unused.
    coverage: Vec<u8>,
    /// Ordered: end of the delivered prefix.
    next_ordered: u64,
    bytes_delivered: u64,
    eagain_seen: bool,
    stopped: bool,
    finished: Option<FinishReason>,
    restarts: u64,
    failures: u64,
    cancels: u64,
    short_transfers: u64,
}

impl ReaderSim<'_> {
    fn fail(&self, what: impl Into<String>) -> SimFailure {
        violation(self.step, what)
    }

    fn positional(&self) -> Option<u32> {
        match self.cfg.source() {
            SourceKind::Positional { align } => Some(align),
            SourceKind::Stream { .. } => None,
        }
    }

    fn feed(&mut self, ev: ReaderEvent) -> Result<(), SimFailure> {
        self.m
            .handle(ev)
            .map_err(|e| self.fail(format!("machine rejected legal event {ev:?}: {e}")))
    }

    /// Execute every queued action; check per-action invariants.
    fn drain_actions(&mut self) -> Result<(), SimFailure> {
        while let Some(a) = self.m.poll_action() {
            if self.finished.is_some() {
                return Err(self.fail(format!("action {a:?} after Finished")));
            }
            self.execute(a)?;
        }
        self.check_bounds()
    }

    fn new_op(&mut self, seq: Seq, kind: SimOpKind) -> Result<(), SimFailure> {
        if !self.seen_seqs.insert(seq) {
            return Err(self.fail(format!("seq {seq:?} reused")));
        }
        let ready_at = self.step + self.rng.below(u64::from(self.p.max_delay) + 1);
        self.ops.push(SimOp {
            seq,
            kind,
            ready_at,
            cancel: false,
        });
        Ok(())
    }

    fn execute(&mut self, a: ReaderAction) -> Result<(), SimFailure> {
        match a {
            ReaderAction::ReadAt { seq, offset, len } => {
                let Some(align) = self.positional() else {
                    return Err(self.fail("ReadAt on a stream"));
                };
                let align = u64::from(align);
                if len == 0 || len > self.cfg.transfer_len() {
                    return Err(self.fail(format!("bad read length {len}")));
                }
                if offset % align != 0 || u64::from(len) % align != 0 {
                    return Err(self.fail(format!("misaligned read {offset}+{len}")));
                }
                let end = offset + u64::from(len);
                if offset < self.cfg.start() || self.cfg.end().is_some_and(|e| end > e) {
                    return Err(self.fail(format!("read {offset}+{len} outside the range")));
                }
                self.new_op(seq, SimOpKind::ReadAt { offset, len })?;
                let reads = self.ops.len();
                if reads > self.cfg.effective_pending_reads() as usize {
                    return Err(self.fail(format!("{reads} reads in flight")));
                }
            }
            ReaderAction::Read { seq, len } => {
                if self.positional().is_some()
                    || self.cfg.source() != (SourceKind::Stream { multishot: false })
                {
                    return Err(self.fail("Read on a positional or multishot source"));
                }
                if len != self.cfg.transfer_len() {
                    return Err(self.fail("stream read of the wrong length"));
                }
                if !self.ops.is_empty() {
                    return Err(self.fail("second stream operation in flight"));
                }
                self.new_op(seq, SimOpKind::Read { len })?;
            }
            ReaderAction::ReadMultishot { seq, len } => {
                if self.cfg.source() != (SourceKind::Stream { multishot: true }) {
                    return Err(self.fail("multishot read on a non-multishot source"));
                }
                if !self.ops.is_empty() {
                    return Err(self.fail("multishot armed twice"));
                }
                self.new_op(seq, SimOpKind::Multishot { len })?;
            }
            ReaderAction::PollReadable { seq } => {
                if self.positional().is_some() {
                    return Err(self.fail("poll on a positional source"));
                }
                if !std::mem::take(&mut self.eagain_seen) {
                    return Err(self.fail("poll without a preceding EAGAIN"));
                }
                if !self.ops.is_empty() {
                    return Err(self.fail("poll while another stream operation is in flight"));
                }
                self.new_op(seq, SimOpKind::Poll)?;
            }
            ReaderAction::Cancel { seq } => {
                self.cancels += 1;
                let Some(op) = self.ops.iter_mut().find(|o| o.seq == seq) else {
                    return Err(self.fail(format!("cancel of {seq:?}, not in flight")));
                };
                op.cancel = true;
            }
            ReaderAction::Deliver(d) => {
                let content = match d.buf_id {
                    None => self.buffers.remove(&d.seq),
                    // The provided buffer stays with the user until the ack recycles it.
                    Some(id) => self.provided.remove(&id),
                };
                let Some(content) = content else {
                    return Err(self.fail(format!("Deliver of {d:?} without a filled buffer")));
                };
                if d.len == 0 || d.len as usize > content.len() {
                    return Err(self.fail(format!("Deliver {d:?} of {} bytes", content.len())));
                }
                for (i, &b) in content[..d.len as usize].iter().enumerate() {
                    if b != pattern(d.offset + i as u64) {
                        return Err(self.fail(format!("corrupt byte at {}", d.offset + i as u64)));
                    }
                }
                if self.cfg.is_ordered() || self.positional().is_none() {
                    if d.offset != self.next_ordered {
                        return Err(self.fail(format!(
                            "out of order: delivered {} while expecting {}",
                            d.offset, self.next_ordered
                        )));
                    }
                    self.next_ordered += u64::from(d.len);
                } else {
                    for i in d.offset..d.offset + u64::from(d.len) {
                        let Some(c) = self.coverage.get_mut(i as usize) else {
                            return Err(self.fail(format!("delivered byte {i} beyond the source")));
                        };
                        *c += 1;
                        if *c > 1 {
                            return Err(self.fail(format!("byte {i} delivered twice")));
                        }
                    }
                }
                self.bytes_delivered += u64::from(d.len);
                self.pending_acks.push((d.seq, d.buf_id));
            }
            ReaderAction::Discard { seq, buf_id } => match buf_id {
                None => {
                    if self.buffers.remove(&seq).is_none() {
                        return Err(self.fail(format!("Discard of {seq:?}: no buffer held")));
                    }
                }
                Some(id) => {
                    if self.provided.remove(&id).is_none() {
                        return Err(self.fail(format!("Discard of provided buffer {id}: not out")));
                    }
                    self.free_provided.push(id);
                }
            },
            ReaderAction::Failed(e) => {
                self.failures += 1;
                if !self.pending_acks.is_empty() {
                    return Err(self.fail("Failed while deliveries are unacknowledged"));
                }
                if !self.ops.is_empty() || self.m.in_flight() != 0 {
                    return Err(self.fail("Failed while operations are in flight"));
                }
                if self.stopped {
                    return Err(self.fail(format!("Failed({e}) after cancel()")));
                }
                let decision = if self.restarts < u64::from(self.p.max_restarts) {
                    self.restarts += 1;
                    Restart::Yes
                } else {
                    Restart::No
                };
                self.feed(ReaderEvent::Restart(decision))?;
            }
            ReaderAction::Finished(reason) => {
                if !self.pending_acks.is_empty() {
                    return Err(self.fail("Finished while deliveries are unacknowledged"));
                }
                if !self.ops.is_empty() {
                    return Err(self.fail("Finished while operations are in flight"));
                }
                if self.stopped != (reason == FinishReason::Cancelled) {
                    return Err(self.fail(format!(
                        "Finished({reason:?}) with stopped={}",
                        self.stopped
                    )));
                }
                self.finished = Some(reason);
            }
        }
        Ok(())
    }

    fn check_bounds(&self) -> Result<(), SimFailure> {
        if !self.cfg.is_ordered() && !self.buffers.is_empty() {
            return Err(self.fail("unordered reader holds completed buffers back"));
        }
        let pending = self.cfg.effective_pending_reads() as usize;
        let window = self.cfg.effective_reorder_window() as usize;
        if self.cfg.is_ordered() && self.buffers.len() + self.ops.len() > window + pending {
            return Err(self.fail("reorder window exceeded"));
        }
        let multishot = self.cfg.source() == SourceKind::Stream { multishot: true };
        // Reads already in flight (and, ordered, reads held back) may still deliver once
        // the bound is reached.
        let slack = pending
            + if self.cfg.is_ordered() {
                window + pending
            } else {
                0
            };
        if !multishot
            && self.pending_acks.len() > self.cfg.max_unacked_deliveries() as usize + slack
        {
            return Err(self.fail("more unacknowledged deliveries than max_unacked allows"));
        }
        Ok(())
    }

    /// Complete operation `i` (it is ready).
    fn complete(&mut self, i: usize) -> Result<(), SimFailure> {
        let op = self.ops[i];
        // A cancelled operation either loses the race (ECANCELED) or had already finished.
        let cancelled = op.cancel && self.rng.chance(70);
        match op.kind {
            SimOpKind::ReadAt { offset, len } => {
                self.ops.swap_remove(i);
                let result = if cancelled {
                    Err(Error::from_errno(libc::ECANCELED))
                } else if let Some(errno) = take_fault(&mut self.faults, offset, u64::from(len)) {
                    Err(Error::from_errno(errno))
                } else {
                    let avail = self.p.data_len.saturating_sub(offset).min(u64::from(len));
                    let align = u64::from(self.positional().unwrap_or(1));
                    let (n, short) = transfer(&mut self.rng, self.p, avail, align);
                    self.short_transfers += u64::from(short);
                    Ok(n as u32)
                };
                let content: Vec<u8> = (0..u64::from(result.unwrap_or(0)))
                    .map(|k| pattern(offset + k))
                    .collect();
                self.buffers.insert(op.seq, content);
                self.feed(ReaderEvent::ReadDone {
                    seq: op.seq,
                    result,
                })
            }
            SimOpKind::Read { len } => {
                self.ops.swap_remove(i);
                let result = self.stream_read(cancelled, len);
                let n = u64::from(result.unwrap_or(0));
                let start = self.stream.consumed - n;
                let content: Vec<u8> = (0..n).map(|k| pattern(start + k)).collect();
                self.buffers.insert(op.seq, content);
                self.feed(ReaderEvent::ReadDone {
                    seq: op.seq,
                    result,
                })
            }
            SimOpKind::Poll => {
                let result = if cancelled {
                    Err(Error::from_errno(libc::ECANCELED))
                } else if self.stream.avail() > 0 {
                    Ok(libc::POLLIN as u32)
                } else if self.stream.closed() {
                    Ok(libc::POLLHUP as u32)
                } else if op.cancel {
                    Err(Error::from_errno(libc::ECANCELED))
                } else {
                    return Ok(()); // not ready yet
                };
                self.ops.swap_remove(i);
                self.feed(ReaderEvent::PollDone {
                    seq: op.seq,
                    result,
                })
            }
            SimOpKind::Multishot { len } => {
                let cancelled_err = Err(Error::from_errno(libc::ECANCELED));
                let (result, buf_id, more) = if cancelled {
                    (cancelled_err, None, false)
                } else if self.stream.avail() == 0 && !self.stream.closed() {
                    if op.cancel {
                        (cancelled_err, None, false)
                    } else {
                        return Ok(()); // armed, waiting for data
                    }
                } else if self.stream.avail() == 0 {
                    (Ok(0), None, false)
                } else if let Some(errno) =
                    take_fault(&mut self.faults, self.stream.consumed, u64::from(len))
                {
                    (Err(Error::from_errno(errno)), None, false)
                } else if let Some(id) = self.free_provided.pop() {
                    let avail = self.stream.avail().min(u64::from(len));
                    let (n, short) = transfer(&mut self.rng, self.p, avail, 1);
                    self.short_transfers += u64::from(short);
                    let start = self.stream.consumed;
                    self.stream.consumed += n;
                    self.provided
                        .insert(id, (0..n).map(|k| pattern(start + k)).collect());
                    (Ok(n as u32), Some(id), !self.rng.chance(10))
                } else {
                    (Err(Error::from_errno(libc::ENOBUFS)), None, false)
                };
                if !more {
                    self.ops.swap_remove(i);
                }
                self.feed(ReaderEvent::MultishotDone {
                    seq: op.seq,
                    result,
                    buf_id,
                    more,
                })
            }
        }
    }

    /// A non-blocking stream read; advances `consumed`.
    fn stream_read(&mut self, cancelled: bool, len: u32) -> Result<u32, Error> {
        if cancelled {
            return Err(Error::from_errno(libc::ECANCELED));
        }
        if let Some(errno) = take_fault(&mut self.faults, self.stream.consumed, u64::from(len)) {
            return Err(Error::from_errno(errno));
        }
        if self.stream.avail() == 0 {
            if self.stream.closed() {
                return Ok(0);
            }
            self.eagain_seen = true;
            return Err(Error::from_errno(libc::EAGAIN));
        }
        let avail = self.stream.avail().min(u64::from(len));
        let (n, short) = transfer(&mut self.rng, self.p, avail, 1);
        self.short_transfers += u64::from(short);
        self.stream.consumed += n;
        Ok(n as u32)
    }

    fn ack(&mut self, k: usize) -> Result<(), SimFailure> {
        let (seq, buf) = self.pending_acks.swap_remove(k);
        if let Some(id) = buf {
            // The user dropped the buffer: back to the provided ring.
            self.free_provided.push(id);
        }
        self.feed(ReaderEvent::Delivered { seq })
    }

    /// One step: maybe produce stream data, maybe stop, then complete one ready operation
    /// or acknowledge one delivery.
    fn step(&mut self) -> Result<(), SimFailure> {
        self.step += 1;
        if self.positional().is_none() {
            self.stream.tick(&mut self.rng, self.p);
        }
        if self.p.stop_at_step == Some(self.step) {
            self.stopped = true;
            self.m.cancel();
            // A driver executes the cancels before it reaps more completions.
            self.drain_actions()?;
        }
        // Count the ready operations, then pick the k-th: the same draws in the same order
        // as collecting them first, without allocating every step.
        let step = self.step;
        let ready = self.ops.iter().filter(|op| op.ready_at <= step).count();
        let ack_now =
            !self.pending_acks.is_empty() && (ready == 0 || self.rng.chance(self.p.ack_pct));
        if ack_now {
            let k = self.rng.below(self.pending_acks.len() as u64) as usize;
            self.ack(k)?;
        } else if ready > 0 {
            let k = self.rng.below(ready as u64) as usize;
            let i = (0..self.ops.len())
                .filter(|&i| self.ops[i].ready_at <= step)
                .nth(k)
                .expect("k < ready");
            self.complete(i)?;
        }
        self.drain_actions()
    }
}

/// Drive a [`ReaderMachine`] with `config` over a simulated source described by `params`,
/// to its end, checking invariants all along:
///
/// * every operation is well-formed (aligned, within the range, at most `pending_reads`
///   positional reads or one stream operation in flight, polls only after `EAGAIN`);
/// * every delivered byte has the right content; unordered: no byte twice; ordered and
///   streams: deliveries contiguous and in order;
/// * every completed read's buffer is delivered or discarded exactly once;
/// * `Failed` and `Finished` only with nothing in flight and every delivery acknowledged;
///   exactly one `Finished`, no action after it;
/// * the reorder window and the unacknowledged-delivery bound hold;
/// * at EOF or end of range, every byte was delivered.
pub fn run_reader(
    seed: u64,
    config: ReaderConfig,
    params: &SimParams,
) -> Result<ReaderRun, SimFailure> {
    let m = ReaderMachine::new(config).map_err(SimFailure::InvalidConfig)?;
    let positional = matches!(config.source(), SourceKind::Positional { .. });
    let mut sim = ReaderSim {
        p: params,
        rng: Rng::new(seed),
        cfg: config,
        m,
        step: 0,
        faults: params.faults.clone(),
        stream: Stream::new(params.data_len),
        ops: Vec::new(),
        seen_seqs: HashSet::new(),
        buffers: HashMap::new(),
        provided: HashMap::new(),
        free_provided: (0..params.provided_buffers).rev().collect(),
        pending_acks: Vec::new(),
        coverage: if positional && !config.is_ordered() {
            vec![0; usize::try_from(params.data_len).unwrap_or(usize::MAX)]
        } else {
            Vec::new()
        },
        next_ordered: if positional { config.start() } else { 0 },
        bytes_delivered: 0,
        eagain_seen: false,
        stopped: false,
        finished: None,
        restarts: 0,
        failures: 0,
        cancels: 0,
        short_transfers: 0,
    };
    sim.drain_actions()?;
    while sim.finished.is_none() {
        if sim.step >= params.max_steps {
            return Err(sim.fail("no Finished within max_steps"));
        }
        sim.step()?;
    }
    // Teardown.
    if let Some(a) = sim.m.poll_action() {
        return Err(sim.fail(format!("action {a:?} after Finished")));
    }
    if !sim.ops.is_empty() || sim.m.in_flight() != 0 {
        return Err(sim.fail("operations in flight at the end"));
    }
    if !sim.buffers.is_empty() || !sim.provided.is_empty() {
        return Err(sim.fail("buffers neither delivered nor discarded"));
    }
    if sim.free_provided.len() != usize::from(params.provided_buffers) {
        return Err(sim.fail("provided buffers leaked"));
    }
    let finish = sim.finished.unwrap_or(FinishReason::Cancelled);
    let expected = if positional {
        let end = config.end().unwrap_or(u64::MAX).min(params.data_len);
        end.saturating_sub(config.start())
    } else {
        params.data_len
    };
    match finish {
        FinishReason::Eof | FinishReason::EndOfRange => {
            if sim.bytes_delivered != expected {
                return Err(sim.fail(format!(
                    "{finish:?} after {} of {expected} bytes",
                    sim.bytes_delivered
                )));
            }
            // An empty range ends before any read, whatever the file's length.
            let range_inside = positional
                && config
                    .end()
                    .is_some_and(|e| e <= params.data_len || e == config.start());
            let want = if range_inside {
                FinishReason::EndOfRange
            } else {
                FinishReason::Eof
            };
            if finish != want {
                return Err(sim.fail(format!("finished with {finish:?}, expected {want:?}")));
            }
        }
        FinishReason::Cancelled => {
            if params.stop_at_step.is_none() {
                return Err(sim.fail("Cancelled without cancel()"));
            }
        }
        FinishReason::Failed(_) => {
            if sim.restarts != u64::from(params.max_restarts) {
                return Err(sim.fail("Failed although a restart was still allowed"));
            }
        }
    }
    let stats = sim.m.stats();
    if stats.bytes_delivered != sim.bytes_delivered || stats.failures != sim.failures {
        return Err(sim.fail("machine statistics disagree with what the device saw"));
    }
    Ok(ReaderRun {
        finish,
        bytes_delivered: sim.bytes_delivered,
        deliveries: stats.deliveries,
        reads_issued: stats.reads_issued,
        failures: sim.failures,
        restarts: sim.restarts,
        readiness_waits: stats.readiness_waits,
        cancels: sim.cancels,
        short_transfers: sim.short_transfers,
        steps: sim.step,
    })
}

// ---- FIFO run -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct FifoOp {
    seq: OpId,
    poll: bool,
    at: u32,
    len: u32,
    ready_at: u64,
    cancel: bool,
}

/// Drive a [`FifoMachine`] through the transactions `txns`, in order, over a simulated
/// stream (`params.data_len` bytes arriving in bursts, then a hang-up), checking:
///
/// * `Begin` before the first read and `End` + `Complete` after the last completion, once
///   per transaction; at most one operation in flight;
/// * each read asks for exactly the remaining space at the right offset; the bytes received
///   are the stream's bytes, in order, none lost between transactions;
/// * one poll per `EAGAIN`, none in drain mode; the outcome counts them;
/// * the status matches what happened (full, EOF, hang-up, drained, cancel/deadline only if
///   requested).
///
/// `params.stop_at_step`, `max_restarts` and `provided_buffers` are not used.
pub fn run_fifo(
    seed: u64,
    txns: &[FifoTxnSpec],
    params: &SimParams,
) -> Result<FifoRun, SimFailure> {
    let mut rng = Rng::new(seed);
    let mut m = FifoMachine::new();
    let mut stream = Stream::new(params.data_len);
    let mut faults = params.faults.clone();
    let mut report = FifoRun {
        outcomes: Vec::new(),
        bytes_received: 0,
        reads: 0,
        eagains: 0,
        polls: 0,
        steps: 0,
    };
    let mut step = 0u64;
    for spec in txns {
        let started = if spec.drain {
            m.drain(spec.len)
        } else {
            m.receive(spec.len)
        };
        let txn = match started {
            Ok(t) => t,
            Err(e) if spec.len == 0 || spec.len > i32::MAX as u32 => {
                // Rejected up front, as it must be; nothing started.
                if m.poll_action().is_some() || m.current().is_some() {
                    return Err(violation(step, format!("rejected receive left state: {e}")));
                }
                continue;
            }
            Err(e) => return Err(violation(step, format!("receive refused: {e}"))),
        };
        let begin_step = step;
        let mut op: Option<FifoOp> = None;
        let mut begun = false;
        let mut ended: Option<u32> = None;
        let mut outcome: Option<FifoOutcome> = None;
        let mut bytes = 0u32;
        let mut eagain_pending = false;
        let mut waits = 0u32;
        let mut stop_requested: Option<FifoStatus> = None;
        let mut hangup_seen = false;
        let mut eof_seen = false;
        loop {
            // Execute actions.
            while let Some(a) = m.poll_action() {
                if outcome.is_some() {
                    return Err(violation(step, format!("{a:?} after Complete")));
                }
                match a {
                    FifoAction::Begin { txn: t, len } => {
                        if begun || t != txn || len != spec.len {
                            return Err(violation(step, "bad or repeated Begin"));
                        }
                        begun = true;
                    }
                    FifoAction::Read { seq, at, len } => {
                        if !begun || ended.is_some() || op.is_some() {
                            return Err(violation(step, "Read outside Begin..End or concurrent"));
                        }
                        if at != bytes || at.checked_add(len) != Some(spec.len) || len == 0 {
                            return Err(violation(step, format!("bad Read at {at} len {len}")));
                        }
                        report.reads += 1;
                        let ready_at = step + rng.below(u64::from(params.max_delay) + 1);
                        op = Some(FifoOp {
                            seq,
                            poll: false,
                            at,
                            len,
                            ready_at,
                            cancel: false,
                        });
                    }
                    FifoAction::ArmPoll { seq } => {
                        if spec.drain || !std::mem::take(&mut eagain_pending) || op.is_some() {
                            return Err(violation(
                                step,
                                "ArmPoll without EAGAIN, or in drain mode",
                            ));
                        }
                        report.polls += 1;
                        waits += 1;
                        op = Some(FifoOp {
                            seq,
                            poll: true,
                            at: 0,
                            len: 0,
                            ready_at: step,
                            cancel: false,
                        });
                    }
                    FifoAction::Cancel { seq } => match op.as_mut() {
                        Some(o) if o.seq == seq && stop_requested.is_some() => o.cancel = true,
                        _ => return Err(violation(step, "Cancel of an operation not in flight")),
                    },
                    FifoAction::End { txn: t, bytes: b } => {
                        if t != txn || ended.is_some() || op.is_some() || b != bytes {
                            return Err(violation(step, "bad End"));
                        }
                        ended = Some(b);
                    }
                    FifoAction::Complete(o) => {
                        if ended.is_none() {
                            return Err(violation(step, "Complete before End"));
                        }
                        outcome = Some(o);
                    }
                }
            }
            if let Some(o) = outcome {
                check_fifo_outcome(
                    step,
                    spec,
                    &o,
                    txn,
                    bytes,
                    waits,
                    stop_requested,
                    hangup_seen,
                    eof_seen,
                )?;
                report.outcomes.push(o);
                report.bytes_received += u64::from(o.bytes);
                break;
            }
            step += 1;
            if step >= params.max_steps {
                return Err(violation(
                    step,
                    "transaction did not complete within max_steps",
                ));
            }
            stream.tick(&mut rng, params);
            let since = step - begin_step;
            let stop = if spec.cancel_after.is_some_and(|c| u64::from(c) == since) {
                Some((FifoEvent::Cancel { txn }, FifoStatus::Cancelled))
            } else if spec.deadline_after.is_some_and(|d| u64::from(d) == since) {
                Some((FifoEvent::Deadline { txn }, FifoStatus::TimedOut))
            } else {
                None
            };
            if let Some((ev, status)) = stop {
                stop_requested.get_or_insert(status);
                m.handle(ev)
                    .map_err(|e| violation(step, format!("{ev:?} rejected: {e}")))?;
                continue;
            }
            let Some(o) = op else {
                return Err(violation(step, "transaction active with nothing in flight"));
            };
            if o.ready_at > step {
                continue;
            }
            let cancelled = o.cancel && rng.chance(70);
            let ev = if o.poll {
                let res = if cancelled {
                    -libc::ECANCELED
                } else if stream.avail() > 0 {
                    i32::from(libc::POLLIN)
                        | if stream.closed() {
                            i32::from(libc::POLLHUP)
                        } else {
                            0
                        }
                } else if stream.closed() {
                    hangup_seen = true;
                    i32::from(libc::POLLHUP)
                } else if o.cancel {
                    -libc::ECANCELED
                } else {
                    continue; // not readable yet
                };
                FifoEvent::PollDone { seq: o.seq, res }
            } else {
                let res = if cancelled {
                    -libc::ECANCELED
                } else if let Some(errno) =
                    take_fault(&mut faults, stream.consumed, u64::from(o.len))
                {
                    -errno
                } else if stream.avail() == 0 {
                    if stream.closed() {
                        eof_seen = true;
                        0
                    } else {
                        report.eagains += 1;
                        eagain_pending = true;
                        -libc::EAGAIN
                    }
                } else {
                    let avail = stream.avail().min(u64::from(o.len));
                    let (n, _) = transfer(&mut rng, params, avail, 1);
                    // The bytes land in the buffer at `at`: check they are the next ones.
                    if u64::from(o.at) + report.bytes_received != stream.consumed {
                        return Err(violation(step, "read lands at the wrong buffer offset"));
                    }
                    stream.consumed += n;
                    bytes += n as u32;
                    n as i32
                };
                FifoEvent::ReadDone { seq: o.seq, res }
            };
            op = None;
            m.handle(ev)
                .map_err(|e| violation(step, format!("{ev:?} rejected: {e}")))?;
        }
    }
    if m.current().is_some() || m.has_op_in_flight() {
        return Err(violation(step, "receiver still busy at the end"));
    }
    if report.bytes_received != stream.consumed {
        return Err(violation(
            step,
            "bytes consumed from the source were not received",
        ));
    }
    if m.readiness_waits() != report.polls {
        return Err(violation(
            step,
            "readiness wait count disagrees with polls armed",
        ));
    }
    report.steps = step;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn check_fifo_outcome(
    step: u64,
    spec: &FifoTxnSpec,
    o: &FifoOutcome,
    txn: TxnId,
    bytes: u32,
    waits: u32,
    stop: Option<FifoStatus>,
    hangup_seen: bool,
    eof_seen: bool,
) -> Result<(), SimFailure> {
    let bad = |what: &str| Err(violation(step, format!("{what}: {o:?} (spec {spec:?})")));
    if o.txn != txn || o.bytes != bytes || o.readiness_waits != waits {
        return bad("outcome disagrees with the operations seen");
    }
    match o.status {
        FifoStatus::Full if o.bytes != spec.len => bad("Full but not full"),
        FifoStatus::Eof if !eof_seen || o.bytes >= spec.len => bad("Eof without a 0-byte read"),
        FifoStatus::HangUp if !hangup_seen || o.bytes >= spec.len => bad("HangUp without POLLHUP"),
        FifoStatus::Drained if !spec.drain => bad("Drained outside drain mode"),
        FifoStatus::Cancelled | FifoStatus::TimedOut if stop != Some(o.status) => {
            bad("cancel/deadline status without that request")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_range_past_the_end_finishes_at_the_range_without_reading() {
        // Found by the `reader` fuzz target: the simulator expected Eof here.
        let p = SimParams {
            data_len: 0,
            ..SimParams::default()
        };
        let cfg = ReaderConfig::positional(77)
            .pending_reads(3)
            .range(50_659, 50_659);
        let r = run_reader(1, cfg, &p).unwrap();
        assert_eq!(r.finish, FinishReason::EndOfRange);
        assert_eq!((r.bytes_delivered, r.reads_issued), (0, 0));
    }

    #[test]
    fn re_reads_near_an_unaligned_eof_stay_aligned() {
        // Found by the `reader` fuzz target: after a restart, a hole re-read was clipped
        // at the (unaligned) EOF, giving a misaligned direct-I/O length (28160+239).
        let p = SimParams {
            data_len: 28_399,
            short_pct: 9,
            max_delay: 6,
            ack_pct: 61,
            burst_max: 1156,
            burst_pct: 32,
            faults: vec![Fault {
                at: 27_019,
                errno: libc::EIO,
                times: 2,
            }],
            max_restarts: 2,
            ..SimParams::default()
        };
        for seed in 0..200 {
            let cfg = ReaderConfig::positional(256)
                .align(128)
                .pending_reads(31)
                .reorder_window(40)
                .max_unacked(27)
                .ordered(seed % 2 == 0);
            let r = run_reader(seed, cfg, &p).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(r.bytes_delivered, 28_399);
        }
    }
}
