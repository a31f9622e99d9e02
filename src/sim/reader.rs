//! The simulated reader run: [`run_reader`] drives a [`ReaderMachine`] over a simulated
//! file or stream.

use std::collections::{HashMap, HashSet};

use fastrand::Rng;

use super::{pattern, take_fault, transfer, violation, Fault, SimFailure, SimParams, Stream};
use crate::error::Error;
use crate::reader::{
    FinishReason, ReaderAction, ReaderConfig, ReaderEvent, ReaderMachine, Restart, Seq, SourceKind,
};

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
        let ready_at = self.step + self.rng.u64(..=u64::from(self.p.max_delay));
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
        let cancelled = op.cancel && self.rng.u32(..100) < 70;
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
                    (Ok(n as u32), Some(id), self.rng.u32(..100) >= 10)
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
            !self.pending_acks.is_empty() && (ready == 0 || self.rng.u32(..100) < self.p.ack_pct);
        if ack_now {
            let k = self.rng.usize(..self.pending_acks.len());
            self.ack(k)?;
        } else if ready > 0 {
            let k = self.rng.usize(..ready);
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
        rng: Rng::with_seed(seed),
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

#[cfg(test)]
mod tests;
