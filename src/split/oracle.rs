//! An oracle for [`SplitMachine`] (tests and fuzzing only, feature `sim`): it plays the
//! driver, keeps its own model of what the machine must do, and checks every action and
//! event against it.
//!
//! The caller chooses what happens — which action to poll when, which child completes in
//! which order with how many bytes or which error, when the parent is cancelled, when the
//! timer fires or comes back cancelled, impossible events — and [`SplitOracle`] checks:
//!
//! - the request completes exactly once, and never before every child submitted and the
//!   timer it armed are back; no action follows the completion;
//! - the status is the first of: a child's error (a write moving 0 bytes is `EIO`), a
//!   cancel, a deadline — set while a child was still out; `Ok(())` otherwise; it is final
//!   once every child is back;
//! - `bytes` is exactly the contiguous prefix of the request that moved; `transferred` is
//!   every byte moved; no byte is submitted or moved twice; without an error, a cancel, a
//!   deadline or end of file, every byte moved;
//! - a submit stays inside the request and the plan's chunk, names a child not in flight;
//!   a cancel names a child in flight, after a status was set; the timer is armed first,
//!   once, and cancelled only once every child is back;
//! - an impossible event is refused and changes nothing; the action queue never grows.
//!
//! Every method returns `Err` with what was broken instead of panicking.
//!
//! [`naive_chunks`] is the byte-by-byte model a [`TransferPlan`](super::TransferPlan) is
//! checked against.
//!
//! ```
//! use iocomplete::split::oracle::SplitOracle;
//! use iocomplete::Direction;
//! use iocomplete::split::{Mode, SplitMachine, TransferPlan};
//! use std::time::Duration;
//!
//! let plan = TransferPlan::builder().max_chunk(100).build()?;
//! let deadline = Some(Duration::from_secs(1));
//! let m = SplitMachine::new(plan, Mode::Serial, Direction::Read, 0, 250, deadline)?;
//! let mut o = SplitOracle::new(m)?;
//! o.poll(usize::MAX).unwrap();
//! let k = 0; // the first (only) child in flight moves 30 of its 100 bytes
//! o.complete(k, Ok(30)).unwrap();
//! o.cancel().unwrap();
//! let done = o.finish().unwrap();
//! assert!(done.status.unwrap_err().is_cancelled());
//! assert_eq!(done.bytes, 30);
//! # Ok::<(), iocomplete::Error>(())
//! ```

use super::machine::{ChildId, SplitAction, SplitEvent, SplitMachine, SplitOutcome};
use super::plan::Chunk;
use crate::error::{Error, ErrorKind, Result};
use crate::ring::Direction;

/// The naive planner a [`TransferPlan`](super::TransferPlan) is checked against: walk the
/// request of `len` bytes at `offset` byte by byte; a byte joins the current chunk unless
/// that would break a limit: `max_chunk`, `boundary` (0: none), `segments` (segment
/// length and most segments per chunk; length 0: none).
pub fn naive_chunks(
    max_chunk: u64,
    boundary: u64,
    segments: (u64, u32),
    offset: u64,
    len: u64,
) -> Vec<Chunk> {
    let (seg_len, seg_max) = segments;
    let mut out: Vec<Chunk> = Vec::new();
    for i in 0..len {
        let off = offset.saturating_add(i);
        match out.last_mut() {
            Some(c)
                if c.end() == off
                    && c.len < max_chunk
                    && (boundary == 0 || off % boundary != 0)
                    && (seg_len == 0 || i / seg_len < c.pos / seg_len + u64::from(seg_max)) =>
            {
                c.len += 1;
            }
            _ => out.push(Chunk {
                offset: off,
                len: 1,
                pos: i,
            }),
        }
    }
    out
}

/// `Err` with what the oracle found broken.
pub type Check<T = ()> = std::result::Result<T, String>;

macro_rules! ensure {
    ($cond:expr, $($what:tt)+) => {
        if !$cond {
            return Err(format!($($what)+));
        }
    };
}

/// A submit the driver carried out whose completion has not been fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// Which child.
    pub child: ChildId,
    /// Device offset.
    pub offset: u64,
    /// Bytes submitted.
    pub len: u64,
    /// Its `Cancel` was polled.
    pub cancelled: bool,
}

/// The deadline timer, as the driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Not armed (no deadline, or not asked yet).
    NotArmed,
    /// `ArmTimer` polled: in the kernel, may fire.
    Armed,
    /// `CancelTimer` polled; its completion still to come.
    CancelAsked,
    /// Fired, or its cancellation came back.
    Done,
}

/// A [`SplitMachine`] with a model of what it must do; see the [module](self) docs.
#[derive(Debug)]
pub struct SplitOracle {
    m: SplitMachine,
    start: u64,
    len: u64,
    slots: usize,
    cap: usize,
    in_flight: Vec<Submitted>,
    /// Per byte of the request: moved, or submitted and not back yet.
    moved: Vec<bool>,
    out: Vec<bool>,
    moved_total: u64,
    /// The status a child error, cancel or deadline set while the request was undecided.
    want: Option<Error>,
    /// A read child moved 0 bytes: end of file.
    eof: bool,
    cancelled: bool,
    timer: Timer,
    decided: Option<SplitOutcome>,
    completed: Option<SplitOutcome>,
}

impl SplitOracle {
    /// The oracle's watch over `m`, a machine fresh from [`SplitMachine::new`] (none of
    /// its actions polled yet).
    ///
    /// # Errors
    ///
    /// A request too long to model byte by byte.
    pub fn new(m: SplitMachine) -> Result<SplitOracle> {
        let (offset, len) = m.request();
        let mut o = SplitOracle {
            cap: m.action_capacity(),
            slots: m.slots(),
            m,
            start: 0,
            len: 0,
            in_flight: Vec::new(),
            moved: Vec::new(),
            out: Vec::new(),
            moved_total: 0,
            want: None,
            eof: false,
            cancelled: false,
            timer: Timer::NotArmed,
            decided: None,
            completed: None,
        };
        o.begin(offset, len)
            .map_err(|_| Error::invalid("split oracle: a request it cannot model"))?;
        Ok(o)
    }

    /// The model of a new request.
    fn begin(&mut self, offset: u64, len: u64) -> Check {
        let bytes = usize::try_from(len).map_err(|e| e.to_string())?;
        self.start = offset;
        self.len = len;
        self.moved = vec![false; bytes];
        self.out = vec![false; bytes];
        self.moved_total = 0;
        self.want = None;
        self.eof = false;
        self.cancelled = false;
        self.timer = Timer::NotArmed;
        self.decided = None;
        self.completed = None;
        self.note_decided()
    }

    /// The machine.
    pub fn machine(&self) -> &SplitMachine {
        &self.m
    }

    /// Submits polled whose completion has not been fed, oldest first (as
    /// [`complete`](Self::complete) leaves them: it swaps the last into the gap).
    pub fn in_flight(&self) -> &[Submitted] {
        &self.in_flight
    }

    /// The timer was armed and its completion has not been fed: a
    /// [`timer_fired`](Self::timer_fired) or [`timer_cancelled`](Self::timer_cancelled)
    /// is possible.
    pub fn timer_out(&self) -> bool {
        matches!(self.timer, Timer::Armed | Timer::CancelAsked)
    }

    /// Poll up to `n` actions, checking each.
    ///
    /// # Errors
    ///
    /// What was broken.
    pub fn poll(&mut self, n: usize) -> Check {
        for _ in 0..n {
            let Some(a) = self.m.poll_action() else {
                return Ok(());
            };
            ensure!(
                self.completed.is_none(),
                "{a:?} after the completion {:?}",
                self.completed
            );
            match a {
                SplitAction::ArmTimer(d) => {
                    ensure!(self.timer == Timer::NotArmed, "timer armed twice");
                    ensure!(self.m.deadline() == Some(d), "armed with {d:?}");
                    ensure!(
                        self.out.iter().chain(&self.moved).all(|b| !b),
                        "timer armed after the first submit"
                    );
                    self.timer = Timer::Armed;
                }
                SplitAction::Submit {
                    child,
                    offset,
                    len,
                    pos,
                } => self.submitted(child, offset, len, pos)?,
                SplitAction::Cancel { child } => {
                    ensure!(
                        self.want.is_some(),
                        "cancel of {child:?} with no status set"
                    );
                    let s = self.in_flight.iter_mut().find(|s| s.child == child);
                    let Some(s) = s else {
                        return Err(format!("cancel of {child:?}, not in flight"));
                    };
                    ensure!(!s.cancelled, "{child:?} cancelled twice");
                    s.cancelled = true;
                }
                SplitAction::CancelTimer => {
                    ensure!(
                        self.timer == Timer::Armed,
                        "CancelTimer, timer {:?}",
                        self.timer
                    );
                    ensure!(
                        self.decided.is_some() && self.in_flight.is_empty(),
                        "timer cancelled with children out"
                    );
                    self.timer = Timer::CancelAsked;
                }
                SplitAction::Complete(c) => {
                    ensure!(self.in_flight.is_empty(), "completed with children out");
                    ensure!(
                        matches!(self.timer, Timer::NotArmed | Timer::Done),
                        "completed with the timer out ({:?})",
                        self.timer
                    );
                    ensure!(
                        self.decided == Some(c),
                        "completed with {c:?}, decided {:?}",
                        self.decided
                    );
                    ensure!(
                        self.m.is_complete(),
                        "complete polled, machine not complete"
                    );
                    self.completed = Some(c);
                }
            }
        }
        Ok(())
    }

    fn submitted(&mut self, child: ChildId, offset: u64, len: u64, pos: u64) -> Check {
        ensure!(
            self.decided.is_none(),
            "submit after the outcome was decided"
        );
        ensure!(
            (child.index() as usize) < self.slots,
            "{child:?} of {} slots",
            self.slots
        );
        ensure!(
            !self.in_flight.iter().any(|s| s.child == child),
            "{child:?} submitted twice"
        );
        ensure!(
            len > 0 && len <= self.m.plan().max_chunk(),
            "submit of {len} bytes"
        );
        let at = offset.checked_sub(self.start);
        ensure!(
            at == Some(pos) && pos.checked_add(len).is_some_and(|e| e <= self.len),
            "submit {offset}+{len} (pos {pos}) outside {}+{}",
            self.start,
            self.len
        );
        for b in pos..pos + len {
            let b = b as usize;
            ensure!(!self.moved[b] && !self.out[b], "byte {b} submitted twice");
            self.out[b] = true;
        }
        self.in_flight.push(Submitted {
            child,
            offset,
            len,
            cancelled: false,
        });
        Ok(())
    }

    /// In-flight submit `k` (an index into [`in_flight`](Self::in_flight)) completed with
    /// `result`: bytes moved from its start, or an error. A byte count over its length is
    /// an impossible event.
    ///
    /// # Errors
    ///
    /// What was broken; `k` out of range.
    pub fn complete(&mut self, k: usize, result: Result<u64>) -> Check {
        let Some(&s) = self.in_flight.get(k) else {
            return Err(format!("no submit {k} in flight"));
        };
        let ev = SplitEvent::ChildCompleted {
            child: s.child,
            result,
        };
        if result.is_ok_and(|n| n > s.len) {
            return self.refused(ev);
        }
        self.in_flight.swap_remove(k);
        let pos = s.offset - self.start;
        for b in pos..pos + s.len {
            self.out[b as usize] = false;
        }
        let n = *result.as_ref().unwrap_or(&0);
        for b in pos..pos + n {
            let b = b as usize;
            ensure!(!self.moved[b], "byte {b} moved twice");
            self.moved[b] = true;
        }
        self.moved_total += n;
        if self.decided.is_none() {
            match result {
                Err(e) => {
                    self.want.get_or_insert(e);
                }
                Ok(0) if self.m.direction() == Direction::Write => {
                    self.want.get_or_insert(Error::from_errno(libc::EIO));
                }
                Ok(0) => self.eof = true,
                Ok(_) => {}
            }
        }
        self.accepted(ev)
    }

    /// Cancel the parent ([`SplitMachine::cancel`]).
    ///
    /// # Errors
    ///
    /// What was broken.
    pub fn cancel(&mut self) -> Check {
        let can = !self.cancelled && self.decided.is_none();
        let did = self.m.cancel();
        ensure!(did == can, "cancel returned {did}, want {can}");
        if can {
            self.cancelled = true;
            self.want.get_or_insert(Error::new(ErrorKind::Cancelled));
        }
        self.after()
    }

    /// The timer fired. Refused (and checked to change nothing) unless it is
    /// [out](Self::timer_out).
    ///
    /// # Errors
    ///
    /// What was broken.
    pub fn timer_fired(&mut self) -> Check {
        if !self.timer_out() {
            return self.refused(SplitEvent::Timeout);
        }
        self.timer = Timer::Done;
        if self.decided.is_none() {
            self.want.get_or_insert(Error::new(ErrorKind::TimedOut));
        }
        self.accepted(SplitEvent::Timeout)
    }

    /// The timer came back without firing. Refused (and checked to change nothing) unless
    /// it is [out](Self::timer_out).
    ///
    /// # Errors
    ///
    /// What was broken.
    pub fn timer_cancelled(&mut self) -> Check {
        if !self.timer_out() {
            return self.refused(SplitEvent::TimerCancelled);
        }
        self.timer = Timer::Done;
        self.accepted(SplitEvent::TimerCancelled)
    }

    /// A completion for `child` that cannot happen unless it is in flight: refused, and
    /// checked to change nothing. For a child in flight, use [`complete`](Self::complete).
    ///
    /// # Errors
    ///
    /// What was broken; `child` in flight.
    pub fn stray(&mut self, child: ChildId, result: Result<u64>) -> Check {
        ensure!(
            !self.in_flight.iter().any(|s| s.child == child),
            "{child:?} is in flight: not a stray"
        );
        self.refused(SplitEvent::ChildCompleted { child, result })
    }

    fn accepted(&mut self, ev: SplitEvent) -> Check {
        if let Err(e) = self.m.handle(ev) {
            return Err(format!("{ev:?} refused: {e}"));
        }
        self.after()
    }

    fn refused(&mut self, ev: SplitEvent) -> Check {
        let state = |m: &SplitMachine| {
            (
                m.in_flight(),
                m.bytes_transferred(),
                m.outcome(),
                m.is_complete(),
                m.pending_actions(),
            )
        };
        let before = state(&self.m);
        ensure!(self.m.handle(ev).is_err(), "impossible {ev:?} accepted");
        ensure!(
            state(&self.m) == before,
            "refused {ev:?} changed the machine"
        );
        self.after()
    }

    /// Checks after every event.
    fn after(&mut self) -> Check {
        ensure!(
            self.m.bytes_transferred() == self.moved_total,
            "transferred {} of {} moved",
            self.m.bytes_transferred(),
            self.moved_total
        );
        ensure!(
            self.m.in_flight() <= self.slots,
            "{} children out",
            self.m.in_flight()
        );
        ensure!(
            self.m.action_capacity() == self.cap,
            "the action queue grew"
        );
        self.note_decided()
    }

    /// The machine's outcome, once there, must be final and right.
    fn note_decided(&mut self) -> Check {
        let now = self.m.outcome();
        if let Some(d) = self.decided {
            ensure!(now == Some(d), "outcome {d:?} became {now:?}");
            return Ok(());
        }
        let Some(c) = now else {
            return Ok(());
        };
        ensure!(
            self.in_flight.is_empty() && self.m.in_flight() == 0,
            "decided {c:?} with children out"
        );
        ensure!(
            c.status == self.want.map_or(Ok(()), Err),
            "status {:?}, want {:?}",
            c.status,
            self.want
        );
        let prefix = self.moved.iter().take_while(|b| **b).count() as u64;
        ensure!(
            c.bytes == prefix,
            "bytes {} but the moved prefix is {prefix}",
            c.bytes
        );
        ensure!(c.transferred == self.moved_total, "transferred {c:?}");
        if c.status.is_ok() && !self.eof {
            ensure!(
                c.bytes == self.len,
                "a clean run moved {} of {}",
                c.bytes,
                self.len
            );
        }
        self.decided = Some(c);
        Ok(())
    }

    /// Drive the request to its end as a driver would — every child in flight moves all
    /// its bytes, a timer asked to cancel comes back cancelled — and check that it
    /// completed exactly once. Returns the completion.
    ///
    /// # Errors
    ///
    /// What was broken; a request that does not end.
    pub fn finish(&mut self) -> Check<SplitOutcome> {
        let mut steps = 0u64;
        loop {
            self.poll(usize::MAX)?;
            steps += 1;
            ensure!(steps <= 4 * self.len + 64, "the request does not end");
            if let Some(s) = self.in_flight.first() {
                let n = s.len;
                self.complete(0, Ok(n))?;
            } else if self.timer == Timer::CancelAsked {
                self.timer_cancelled()?;
            } else {
                break;
            }
        }
        ensure!(self.m.poll_action().is_none(), "actions left");
        let Some(c) = self.completed else {
            return Err(format!(
                "never completed: decided {:?}, timer {:?}",
                self.decided, self.timer
            ));
        };
        ensure!(self.m.is_complete(), "machine not complete");
        Ok(c)
    }

    /// Start the next request on the same machine ([`SplitMachine::restart`]), once this
    /// one [`finish`](Self::finish)ed.
    ///
    /// # Errors
    ///
    /// What was broken: the machine refused, or a request too long to model.
    pub fn restart(&mut self, offset: u64, len: u64) -> Check {
        self.m
            .restart(offset, len)
            .map_err(|e| format!("restart({offset}, {len}): {e}"))?;
        self.begin(offset, len)
    }
}
