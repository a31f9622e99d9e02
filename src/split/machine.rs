//! The split driver state machine ([`SplitMachine`]).

use std::collections::VecDeque;
use std::time::Duration;

use super::plan::TransferPlan;
use crate::error::{Error, ErrorKind, Result};
use crate::ring::Direction;

/// The most children [`Mode::Parallel`] may keep in flight.
pub const MAX_IN_FLIGHT: u32 = 4096;

/// How the children of a split request run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One child, re-armed for each chunk in turn (request reuse). Chunks complete in order.
    Serial,
    /// Up to `max_in_flight` children at once (`1..=`[`MAX_IN_FLIGHT`]).
    Parallel {
        /// Children in flight at most.
        max_in_flight: u32,
    },
}

/// A child request's id: the index of its slot, `0..max_in_flight` (always 0 in
/// [`Mode::Serial`]). A slot is re-armed with a new chunk once its child completed, so an
/// id names the slot's current child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildId(u32);

impl ChildId {
    /// The id of slot `index` (any value: ids the machine never issued are rejected by
    /// [`SplitMachine::handle`]).
    pub const fn new(index: u32) -> ChildId {
        ChildId(index)
    }

    /// The slot index.
    pub const fn index(self) -> u32 {
        self.0
    }
}

/// Something that happened to a split request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitEvent {
    /// A child's completion came back: the bytes it moved, or its error.
    ChildCompleted {
        /// Which child.
        child: ChildId,
        /// Bytes moved (at most the submitted length), or the error.
        result: Result<u64>,
    },
    /// The parent request was cancelled ([`SplitMachine::cancel`]).
    Cancel,
    /// The deadline timer fired ([`SplitAction::ArmTimer`] was carried out and its deadline
    /// passed).
    Timeout,
    /// The deadline timer's completion came back without firing: cancelled
    /// ([`SplitAction::CancelTimer`]) or refused. It never fires.
    TimerCancelled,
}

/// The parent request's outcome, carried by [`SplitAction::Complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitOutcome {
    /// `Ok(())` on success and at end of file; otherwise the first error, or
    /// [`ErrorKind::Cancelled`] / [`ErrorKind::TimedOut`].
    pub status: Result<()>,
    /// Length of the request's prefix transferred without a gap.
    pub bytes: u64,
    /// Every byte the children moved (at least `bytes`).
    pub transferred: u64,
}

/// Something the driver must do for a split request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitAction {
    /// Arm the request's deadline timer to fire after this long (the first action of a
    /// request with a deadline). Report its end with [`SplitEvent::Timeout`] (fired) or
    /// [`SplitEvent::TimerCancelled`] (cancelled, or could not be armed).
    ArmTimer(Duration),
    /// Submit child `child` for `len` bytes at device offset `offset`, using the parent's
    /// buffer space from position `pos`.
    Submit {
        /// Which child (re-armed if it ran before).
        child: ChildId,
        /// Device offset.
        offset: u64,
        /// Bytes to transfer (never 0).
        len: u64,
        /// Position within the parent's buffer space (0 = its first byte).
        pos: u64,
    },
    /// Cancel child `child` (it is in flight; its completion still comes back).
    Cancel {
        /// Which child.
        child: ChildId,
    },
    /// Cancel the deadline timer: every child is back before it fired. Its completion
    /// still comes back ([`SplitEvent::TimerCancelled`], or [`SplitEvent::Timeout`] if it
    /// fired after all).
    CancelTimer,
    /// Complete the parent. Emitted exactly once, after the last child's completion and the
    /// timer's.
    Complete(SplitOutcome),
}

/// Where a child slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildState {
    /// No child: free to be armed.
    Idle,
    /// A `Submit` for it is queued, not yet polled: the driver has not submitted it.
    Queued,
    /// Submitted: its completion will come back.
    InFlight,
}

/// One child slot.
#[derive(Debug, Clone, Copy)]
struct Child {
    state: ChildState,
    /// Device offset of the next byte of its chunk to transfer.
    cur: u64,
    /// Device offset one past its chunk.
    end: u64,
    /// Bytes of the current submission.
    submitted: u64,
    /// A `Cancel` was issued for the current submission.
    cancel_sent: bool,
}

const IDLE: Child = Child {
    state: ChildState::Idle,
    cur: 0,
    end: 0,
    submitted: 0,
    cancel_sent: false,
};

/// Where the deadline timer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// None armed, or its completion came back: it holds the request no longer.
    Idle,
    /// `ArmTimer` is queued, not yet polled: it cannot fire.
    Queued,
    /// Armed by the driver: it may fire.
    Armed,
    /// `CancelTimer` was queued (and maybe polled); its completion is still to come.
    Cancelling,
}

const NOT_IN_FLIGHT: Error = Error::not_in_progress("split child");
const TOO_MANY_BYTES: Error = Error::new(ErrorKind::ExcessBytes);
const NO_TIMER: Error = Error::not_in_progress("split timer");

/// The split driver: one parent request carried out as chunk-sized child requests.
///
/// [`SplitMachine`] is sans-I/O, in the style of `quinn-proto`: feed it [`SplitEvent`]s
/// (a child completed, the parent was cancelled, the deadline timer fired or was
/// cancelled) with [`SplitMachine::handle`], and pull the [`SplitAction`]s it wants
/// carried out (arm or cancel the timer, submit or cancel a child, complete the parent)
/// with [`SplitMachine::poll_action`] until it returns `None`. It never makes a syscall;
/// the ring driver turns actions into SQEs and CQEs into events.
///
/// # Rules
///
/// - **Modes.** [`Mode::Serial`] re-arms one child (id 0) for each chunk in turn (one
///   request reused, not one per chunk). [`Mode::Parallel`] keeps up to `max_in_flight`
///   children (ids `0..max_in_flight`) in flight, each re-armed with the next chunk when
///   it finishes.
/// - **Short transfers continue**: a child that moved fewer bytes than submitted is
///   resubmitted for the rest of its chunk, from where it stopped.
/// - **End of file**: a read child that moves 0 bytes of a non-empty submission hit end of
///   file. No chunk past that point is started; children before it finish; the parent then
///   completes with **`Ok(())`** and `bytes` = the bytes before the end — fewer than asked,
///   as `read(2)` reports a short count. Compare `bytes` with the request length to detect
///   it. A *write* child that moves 0 bytes made no progress and cannot be retried without
///   risking a loop: it fails the parent with `Os(EIO)`.
/// - **First status wins.** The first child error, parent cancel or deadline fixes the
///   parent's status; every other child in flight is cancelled; children not yet submitted
///   are dropped. Later errors, cancels and deadlines — the `ECANCELED` completions of the
///   children it cancelled among them — change nothing: a child's error stands over a
///   later cancel or timeout. Once every child is back the status is final (`Ok(())` if
///   nothing came first): a deadline that fires after that loses the race.
/// - **The parent completes once, after its last child and its timer.**
///   [`SplitAction::Complete`] is emitted exactly once, only when no child is in flight
///   and the deadline timer (if one was armed) is back: fired, or cancelled with
///   [`SplitAction::CancelTimer`] once the children were back.
/// - **Cancel** ([`SplitEvent::Cancel`]) completes the parent with [`ErrorKind::Cancelled`]
///   and the deadline ([`SplitEvent::Timeout`]) with [`ErrorKind::TimedOut`] (unless a
///   status came first); both after the children's completions come back.
///
/// These are the completion references of a request raced by several paths (see
/// [`gate`](crate::gate)), held as plain state: the execution path's until every child is
/// back, the cancel path's until it ran or the request stopped being cancelable, the
/// timer's until its completion came back.
///
/// The byte counts of the [`SplitOutcome`]: `bytes` is the length of the request's prefix
/// that was transferred without a gap (what a caller can use: on a read, the valid bytes
/// from the start of the buffer); `transferred` is every byte any child moved, which can be
/// more when children after a gap succeeded.
///
/// # Allocation
///
/// [`SplitMachine::new`] allocates the child table and an action queue with room for every
/// action that can be pending at once (a submit and a cancel per child, the timer's, and
/// the completion). After that, handling events and polling actions never allocates, and
/// [`SplitMachine::restart`] reuses both for the next request.
///
/// # Totality
///
/// Every method is total: on any sequence of events (the fuzz target's input) the machine
/// never panics. An event that cannot happen — a completion for a child that is not in
/// flight (never submitted, its submit not yet polled, or already completed), one that
/// reports more bytes than were submitted, a timer event with no timer armed (none asked
/// for, its `ArmTimer` not yet polled, or its completion already reported) — is rejected
/// with [`ErrorKind::NotInProgress`] or [`ErrorKind::ExcessBytes`] and changes nothing. A
/// cancel after the children are back is accepted and ignored (the benign race of a late
/// cancel).
///
/// # Example
///
/// ```
/// use iocomplete::Direction;
/// use iocomplete::split::{Mode, SplitAction, SplitEvent, SplitMachine, TransferPlan};
/// let plan = TransferPlan::builder().max_chunk(4096).build()?;
/// let mut m = SplitMachine::new(plan, Mode::Serial, Direction::Read, 0, 10_000, None)?;
/// let mut done = None;
/// while done.is_none() {
///     match m.poll_action() {
///         // A real driver submits an SQE here; pretend the device moves every byte.
///         Some(SplitAction::Submit { child, len, .. }) => {
///             m.handle(SplitEvent::ChildCompleted { child, result: Ok(len) })?
///         }
///         Some(SplitAction::Complete(c)) => done = Some(c),
///         other => unreachable!("{other:?}"),
///     }
/// }
/// let c = done.unwrap();
/// assert_eq!((c.status, c.bytes), (Ok(()), 10_000));
/// # Ok::<(), iocomplete::Error>(())
/// ```
#[derive(Debug)]
pub struct SplitMachine {
    plan: TransferPlan,
    mode: Mode,
    direction: Direction,
    /// The deadline each request's timer is armed with, if any.
    deadline: Option<Duration>,
    /// Device offset of the request's first byte.
    start: u64,
    /// Device offset one past the request.
    end: u64,
    /// Planning cursor: the first device offset not yet given to a child.
    next: u64,
    /// Lowest device offset known not to have been transferred (end of file, or where an
    /// unfinished child stopped); `end` while there is none.
    hole: u64,
    /// Bytes moved by all children.
    transferred: u64,
    /// The first error (cancel and timeout included): fixes the parent's status.
    failure: Option<Error>,
    /// The cancel path ran ([`cancel`](Self::cancel)).
    cancelled: bool,
    timer: Timer,
    /// Every child is back: the outcome is final (emitted once the timer is back too).
    outcome: Option<SplitOutcome>,
    /// The parent's completion was emitted.
    completed: bool,
    children: Vec<Child>,
    actions: VecDeque<SplitAction>,
}

impl SplitMachine {
    /// A machine for the request of `len` bytes at device offset `offset`, with its first
    /// actions already queued (poll them): the deadline timer's ([`SplitAction::ArmTimer`],
    /// when `deadline` is given), then the first submits. A zero-length request completes
    /// at once with `Ok(())` and 0 bytes, arming no timer.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Misaligned`] or [`ErrorKind::OffsetOutOfRange`] for a request the plan
    /// rejects ([`TransferPlan::check`]); [`ErrorKind::OutOfRange`] for a
    /// `max_in_flight` outside `1..=`[`MAX_IN_FLIGHT`].
    pub fn new(
        plan: TransferPlan,
        mode: Mode,
        direction: Direction,
        offset: u64,
        len: u64,
        deadline: Option<Duration>,
    ) -> Result<SplitMachine> {
        let slots = match mode {
            Mode::Serial => 1,
            Mode::Parallel { max_in_flight } => {
                if max_in_flight == 0 || max_in_flight > MAX_IN_FLIGHT {
                    return Err(Error::out_of_range(
                        "max_in_flight",
                        1,
                        MAX_IN_FLIGHT.into(),
                    ));
                }
                max_in_flight as usize
            }
        };
        plan.check(offset, len)?;
        let mut m = SplitMachine {
            plan,
            mode,
            direction,
            deadline,
            start: offset,
            end: offset,
            next: offset,
            hole: offset,
            transferred: 0,
            failure: None,
            cancelled: false,
            timer: Timer::Idle,
            outcome: None,
            completed: false,
            children: vec![IDLE; slots],
            actions: VecDeque::with_capacity(2 * slots + 2),
        };
        m.begin(offset, len);
        Ok(m)
    }

    /// Reuse this machine (its child table and action queue: no allocation) for a new
    /// request with the same plan, mode, direction and deadline.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InProgress`] if the current request has not completed or its actions
    /// were not all polled; the plan's errors for the new request. On error nothing
    /// changes.
    pub fn restart(&mut self, offset: u64, len: u64) -> Result<()> {
        if !self.completed || !self.actions.is_empty() {
            return Err(Error::new(ErrorKind::InProgress {
                what: "the split request (or its actions, not all polled)",
            }));
        }
        self.plan.check(offset, len)?;
        self.begin(offset, len);
        Ok(())
    }

    fn begin(&mut self, offset: u64, len: u64) {
        self.start = offset;
        self.end = offset + len;
        self.next = offset;
        self.hole = self.end;
        self.transferred = 0;
        self.failure = None;
        self.cancelled = false;
        self.timer = Timer::Idle;
        self.outcome = None;
        self.completed = false;
        self.children.fill(IDLE);
        if let Some(d) = self.deadline.filter(|_| len > 0) {
            self.timer = Timer::Queued;
            self.actions.push_back(SplitAction::ArmTimer(d));
        }
        for i in 0..self.children.len() {
            if !self.arm_next(i) {
                break;
            }
        }
        self.maybe_complete();
    }

    /// Feed one event. Then poll the actions it produced.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotInProgress`] or [`ErrorKind::ExcessBytes`] for an impossible event
    /// (see *Totality* on [`SplitMachine`]); the machine is unchanged.
    pub fn handle(&mut self, event: SplitEvent) -> Result<()> {
        match event {
            SplitEvent::ChildCompleted { child, result } => self.child_completed(child, result),
            SplitEvent::Cancel => {
                self.cancel();
                Ok(())
            }
            SplitEvent::Timeout => self.timer_done(true),
            SplitEvent::TimerCancelled => self.timer_done(false),
        }
    }

    /// Shorthand for [`SplitEvent::ChildCompleted`].
    ///
    /// # Errors
    ///
    /// As [`handle`](Self::handle).
    pub fn child_completed(&mut self, child: ChildId, result: Result<u64>) -> Result<()> {
        let i = child.0 as usize;
        let c = match self.children.get(i) {
            Some(c) if c.state == ChildState::InFlight => *c,
            _ => return Err(NOT_IN_FLIGHT),
        };
        if let Ok(n) = result {
            if n > c.submitted {
                return Err(TOO_MANY_BYTES);
            }
        }
        self.children[i].state = ChildState::Idle;
        if c.cancel_sent {
            // A cancel still queued for it is moot now: withdraw it, so that every
            // `Cancel` the driver polls names a child really in flight.
            self.actions
                .retain(|a| !matches!(a, SplitAction::Cancel { child: x } if *x == child));
        }
        match result {
            Ok(n) => {
                self.transferred += n;
                let cur = c.cur + n;
                self.children[i].cur = cur;
                if cur == c.end {
                    self.arm_next(i);
                } else if n == 0 {
                    self.note_hole(cur);
                    if self.direction == Direction::Write {
                        self.abort(Error::from_errno(libc::EIO));
                    }
                } else if self.failure.is_none() && cur < self.hole {
                    // Short transfer: the rest of the chunk, from where it stopped.
                    self.submit(i);
                } else {
                    self.note_hole(cur);
                }
            }
            Err(e) => {
                self.note_hole(c.cur);
                // The ECANCELED of a child we cancelled is the echo of our own cancel.
                if !(c.cancel_sent && e.is_cancelled()) {
                    self.abort(e);
                }
            }
        }
        self.maybe_complete();
        Ok(())
    }

    /// Cancel the parent ([`SplitEvent::Cancel`]): status [`ErrorKind::Cancelled`] unless
    /// one was set first; the children in flight are cancelled, queued ones withdrawn.
    /// Returns false — and does nothing — once it was cancelled, or every child is back
    /// (it completed, or is completing).
    pub fn cancel(&mut self) -> bool {
        if self.cancelled || self.outcome.is_some() {
            return false;
        }
        self.cancelled = true;
        self.abort(Error::new(ErrorKind::Cancelled));
        true
    }

    /// The timer's completion came back: it `fired`, or it was cancelled (or refused).
    fn timer_done(&mut self, fired: bool) -> Result<()> {
        if !matches!(self.timer, Timer::Armed | Timer::Cancelling) {
            return Err(NO_TIMER);
        }
        // A cancel of it still queued is moot now.
        self.actions
            .retain(|a| !matches!(a, SplitAction::CancelTimer));
        self.timer = Timer::Idle;
        if fired {
            self.abort(Error::new(ErrorKind::TimedOut));
        }
        self.maybe_complete();
        Ok(())
    }

    /// The next action to carry out, in order, or `None` when there is nothing to do until
    /// the next event.
    pub fn poll_action(&mut self) -> Option<SplitAction> {
        let action = self.actions.pop_front()?;
        match action {
            SplitAction::Submit { child, .. } => {
                if let Some(c) = self.children.get_mut(child.0 as usize) {
                    c.state = ChildState::InFlight;
                }
            }
            SplitAction::ArmTimer(_) => self.timer = Timer::Armed,
            _ => {}
        }
        Some(action)
    }

    /// True once [`SplitAction::Complete`] was emitted (it may still be waiting to be
    /// polled).
    pub const fn is_complete(&self) -> bool {
        self.completed
    }

    /// The parent's outcome, final once every child is back (before the timer's completion
    /// came back and [`SplitAction::Complete`] carried it); `None` before.
    pub const fn outcome(&self) -> Option<SplitOutcome> {
        self.outcome
    }

    /// Bytes moved by all children so far.
    pub const fn bytes_transferred(&self) -> u64 {
        self.transferred
    }

    /// Children submitted or about to be (their submit is queued) whose completion has not
    /// come back.
    pub fn in_flight(&self) -> usize {
        self.children
            .iter()
            .filter(|c| c.state != ChildState::Idle)
            .count()
    }

    /// The request: device offset and length.
    pub const fn request(&self) -> (u64, u64) {
        (self.start, self.end - self.start)
    }

    /// The plan the request is cut with.
    pub const fn plan(&self) -> &TransferPlan {
        &self.plan
    }

    /// The mode children run in.
    pub const fn mode(&self) -> Mode {
        self.mode
    }

    /// Which way the bytes move.
    pub const fn direction(&self) -> Direction {
        self.direction
    }

    /// The deadline each request's timer is armed with.
    pub const fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// The action queue's capacity (tests check that it never grows).
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn action_capacity(&self) -> usize {
        self.actions.capacity()
    }

    /// Children that may be in flight at once.
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn slots(&self) -> usize {
        self.children.len()
    }

    /// Actions queued, not yet polled.
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn pending_actions(&self) -> usize {
        self.actions.len()
    }

    /// Give slot `i` the next chunk, if the request still wants one. Returns whether it did.
    fn arm_next(&mut self, i: usize) -> bool {
        if self.failure.is_some() || self.next >= self.hole {
            return false;
        }
        let len = self
            .plan
            .chunk_len(self.next, self.next - self.start, self.hole - self.next);
        let c = &mut self.children[i];
        c.cur = self.next;
        c.end = self.next + len;
        self.next += len;
        self.submit(i);
        true
    }

    /// Queue a submit of the rest of slot `i`'s chunk.
    fn submit(&mut self, i: usize) {
        let c = &mut self.children[i];
        c.state = ChildState::Queued;
        c.submitted = c.end - c.cur;
        c.cancel_sent = false;
        self.actions.push_back(SplitAction::Submit {
            child: ChildId(i as u32),
            offset: c.cur,
            len: c.submitted,
            pos: c.cur - self.start,
        });
    }

    fn note_hole(&mut self, at: u64) {
        self.hole = self.hole.min(at);
    }

    /// Fix the parent's status to `error` unless one is already fixed, and stop every
    /// child: queued submits are withdrawn, in-flight children cancelled.
    fn abort(&mut self, error: Error) {
        if self.outcome.is_some() || self.failure.is_some() {
            return;
        }
        self.failure = Some(error);
        for i in 0..self.children.len() {
            let c = self.children[i];
            match c.state {
                ChildState::Idle => {}
                ChildState::Queued => {
                    let child = ChildId(i as u32);
                    self.actions.retain(
                        |a| !matches!(a, SplitAction::Submit { child: x, .. } if *x == child),
                    );
                    self.children[i].state = ChildState::Idle;
                    self.note_hole(c.cur);
                }
                ChildState::InFlight => {
                    if !c.cancel_sent {
                        self.children[i].cancel_sent = true;
                        self.actions.push_back(SplitAction::Cancel {
                            child: ChildId(i as u32),
                        });
                    }
                }
            }
        }
        self.maybe_complete();
    }

    /// Fix the outcome once every child is back and nothing is left to start (then stop
    /// the timer), and emit the completion once the timer is back too.
    fn maybe_complete(&mut self) {
        if self.completed {
            return;
        }
        if self.outcome.is_none() {
            if self.children.iter().any(|c| c.state != ChildState::Idle) {
                return;
            }
            if self.failure.is_none() && self.next < self.hole && self.arm_next(0) {
                // Unreachable by construction (a slot is re-armed whenever its chunk is
                // done), kept so that no event sequence can strand the request.
                return;
            }
            self.outcome = Some(SplitOutcome {
                status: self.failure.map_or(Ok(()), Err),
                bytes: self.hole.min(self.next) - self.start,
                transferred: self.transferred,
            });
            match self.timer {
                // Never armed: it can never fire.
                Timer::Queued => {
                    self.actions
                        .retain(|a| !matches!(a, SplitAction::ArmTimer(_)));
                    self.timer = Timer::Idle;
                }
                Timer::Armed => {
                    self.timer = Timer::Cancelling;
                    self.actions.push_back(SplitAction::CancelTimer);
                }
                Timer::Idle | Timer::Cancelling => {}
            }
        }
        if let (Timer::Idle, Some(c)) = (self.timer, self.outcome) {
            self.completed = true;
            self.actions.push_back(SplitAction::Complete(c));
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
