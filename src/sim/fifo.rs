//! The simulated FIFO run: [`run_fifo`] drives a [`FifoMachine`] through transactions over
//! a simulated stream.

use fastrand::Rng;

use super::{take_fault, transfer, violation, SimFailure, SimParams, Stream};
use std::time::Duration;

use crate::error::Error;
use crate::fifo::{FifoAction, FifoEvent, FifoMachine, FifoOutcome, FifoSeq, FifoStatus, TxnId};

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
    /// Start the transaction with a deadline timer that fires this many steps into it
    /// ([`FifoEvent::Deadline`]) unless its cancel came back first.
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

#[derive(Debug, Clone, Copy)]
struct FifoOp {
    seq: FifoSeq,
    poll: bool,
    at: u32,
    len: u32,
    ready_at: u64,
    cancel: bool,
}

/// A transaction's deadline timer, as the simulated kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FifoTimer {
    Off,
    Armed,
    /// Asked to cancel: its completion (not fired) comes back at `ready_at`, unless the
    /// deadline comes first and it fires.
    Cancelling {
        ready_at: u64,
    },
}

/// Drive a [`FifoMachine`] through the transactions `txns`, in order, over a simulated
/// stream (`params.data_len` bytes arriving in bursts, then a hang-up), checking:
///
/// * `Begin` before the first read and `End` + `Complete` after the last completion, once
///   per transaction; at most one operation in flight;
/// * each read asks for exactly the remaining space at the right offset; the bytes received
///   are the stream's bytes, in order, none lost between transactions;
/// * one poll per `EAGAIN`, none in drain mode; the outcome counts them;
/// * the deadline timer is armed once, with a transaction that has one, cancelled at most
///   once, and back before `End`; it fires, or its cancel comes back, in any order with
///   the operation's completion;
/// * the status matches what happened (full, EOF, hang-up, drained, cancel/deadline only if
///   requested).
///
/// `params.stop_at_step`, `max_restarts` and `provided_buffers` are not used.
pub fn run_fifo(
    seed: u64,
    txns: &[FifoTxnSpec],
    params: &SimParams,
) -> Result<FifoRun, SimFailure> {
    let mut rng = Rng::with_seed(seed);
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
        let deadline = spec
            .deadline_after
            .map(|d| Duration::from_millis(u64::from(d)));
        let started = if spec.drain {
            m.drain(spec.len, deadline)
        } else {
            m.receive(spec.len, deadline)
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
        let mut timer = FifoTimer::Off;
        let mut timer_armed = false;
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
                    FifoAction::ArmTimer { .. } => {
                        if !begun || ended.is_some() || deadline.is_none() || timer_armed {
                            return Err(violation(step, "ArmTimer without a deadline, or twice"));
                        }
                        timer_armed = true;
                        timer = FifoTimer::Armed;
                    }
                    FifoAction::CancelTimer => {
                        if timer != FifoTimer::Armed {
                            return Err(violation(step, "CancelTimer with no timer armed"));
                        }
                        let ready_at = step + rng.u64(..u64::from(params.max_delay) + 1);
                        timer = FifoTimer::Cancelling { ready_at };
                    }
                    FifoAction::Read { seq, at, len } => {
                        if !begun || ended.is_some() || op.is_some() {
                            return Err(violation(step, "Read outside Begin..End or concurrent"));
                        }
                        if at != bytes || at.checked_add(len) != Some(spec.len) || len == 0 {
                            return Err(violation(step, format!("bad Read at {at} len {len}")));
                        }
                        report.reads += 1;
                        let ready_at = step + rng.u64(..=u64::from(params.max_delay));
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
                        let busy = op.is_some() || timer != FifoTimer::Off;
                        if t != txn || ended.is_some() || busy || b != bytes {
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
            // The timer fires at the deadline, even asked to cancel, unless the cancel came
            // back first; the cancel comes back before or after the operation's completion.
            let fires = timer != FifoTimer::Off
                && spec.deadline_after.is_some_and(|d| u64::from(d) <= since);
            let cancel_back = match timer {
                FifoTimer::Cancelling { ready_at } => {
                    ready_at <= step && (op.is_none() || rng.u32(..100) < 50)
                }
                _ => false,
            };
            let stop = if spec.cancel_after.is_some_and(|c| u64::from(c) == since) {
                Some((FifoEvent::Cancel { txn }, Some(FifoStatus::Cancelled)))
            } else if fires {
                timer = FifoTimer::Off;
                Some((FifoEvent::Deadline { txn }, Some(FifoStatus::TimedOut)))
            } else if cancel_back {
                timer = FifoTimer::Off;
                Some((FifoEvent::TimerCancelled { txn }, None))
            } else {
                None
            };
            if let Some((ev, status)) = stop {
                if let Some(status) = status {
                    stop_requested.get_or_insert(status);
                }
                m.handle(ev)
                    .map_err(|e| violation(step, format!("{ev:?} rejected: {e}")))?;
                continue;
            }
            let Some(o) = op else {
                if matches!(timer, FifoTimer::Cancelling { .. }) {
                    continue; // waiting for the timer
                }
                return Err(violation(step, "transaction active with nothing in flight"));
            };
            if o.ready_at > step {
                continue;
            }
            let cancelled = o.cancel && rng.u32(..100) < 70;
            let seq = o.seq;
            let ev = if o.poll {
                let hup = if stream.closed() { libc::POLLHUP } else { 0 };
                let result = if cancelled {
                    Err(Error::from_errno(libc::ECANCELED))
                } else if stream.avail() > 0 {
                    Ok((libc::POLLIN | hup) as u32)
                } else if stream.closed() {
                    hangup_seen = true;
                    Ok(libc::POLLHUP as u32)
                } else if o.cancel {
                    Err(Error::from_errno(libc::ECANCELED))
                } else {
                    continue; // not readable yet
                };
                FifoEvent::PollDone { seq, result }
            } else {
                let read = |result| FifoEvent::ReadDone { seq, result };
                if cancelled {
                    read(Err(Error::from_errno(libc::ECANCELED)))
                } else if let Some(errno) =
                    take_fault(&mut faults, stream.consumed, u64::from(o.len))
                {
                    read(Err(Error::from_errno(errno)))
                } else if stream.avail() == 0 {
                    if stream.closed() {
                        eof_seen = true;
                        read(Ok(0))
                    } else {
                        report.eagains += 1;
                        eagain_pending = true;
                        // Either way a driver learns it (see `FifoEvent::ReadEmpty`).
                        if rng.u32(..100) < 50 {
                            FifoEvent::ReadEmpty { seq }
                        } else {
                            read(Err(Error::from_errno(libc::EAGAIN)))
                        }
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
                    read(Ok(n as u32))
                }
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
