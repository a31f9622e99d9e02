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
/// - **Modes.** [`Mode::Serial`] re-arms one child (id 0) for each chunk in turn — the
///   seed's request reuse. [`Mode::Parallel`] keeps up to `max_in_flight` children (ids
///   `0..max_in_flight`) in flight, each re-armed with the next chunk when it finishes.
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
mod tests {
    use super::*;

    fn plan(max_chunk: u64) -> TransferPlan {
        TransferPlan::builder()
            .max_chunk(max_chunk)
            .build()
            .unwrap()
    }

    fn drain(m: &mut SplitMachine) -> Vec<SplitAction> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    fn submits(actions: &[SplitAction]) -> Vec<(u32, u64, u64, u64)> {
        actions
            .iter()
            .filter_map(|a| match *a {
                SplitAction::Submit {
                    child,
                    offset,
                    len,
                    pos,
                } => Some((child.0, offset, len, pos)),
                _ => None,
            })
            .collect()
    }

    fn completion(actions: &[SplitAction]) -> Option<SplitOutcome> {
        actions.iter().find_map(|a| match a {
            SplitAction::Complete(c) => Some(*c),
            _ => None,
        })
    }

    const SECOND: Option<Duration> = Some(Duration::from_secs(1));
    const ECANCELED: Error = Error::new(ErrorKind::Cancelled);

    const C0: ChildId = ChildId(0);
    const C1: ChildId = ChildId(1);
    const C2: ChildId = ChildId(2);

    #[test]
    fn serial_reuses_one_child_in_order() {
        let mut m =
            SplitMachine::new(plan(100), Mode::Serial, Direction::Read, 1000, 250, None).unwrap();
        let mut seen = Vec::new();
        loop {
            let a = drain(&mut m);
            if let Some(c) = completion(&a) {
                assert_eq!(
                    c,
                    SplitOutcome {
                        status: Ok(()),
                        bytes: 250,
                        transferred: 250
                    }
                );
                break;
            }
            let s = submits(&a);
            assert_eq!(s.len(), 1);
            seen.push(s[0]);
            m.child_completed(C0, Ok(s[0].2)).unwrap();
        }
        assert_eq!(
            seen,
            [(0, 1000, 100, 0), (0, 1100, 100, 100), (0, 1200, 50, 200)]
        );
        assert!(m.is_complete());
        assert_eq!(m.poll_action(), None);
    }

    #[test]
    fn short_transfer_resubmits_the_rest_of_the_chunk() {
        let mut m =
            SplitMachine::new(plan(100), Mode::Serial, Direction::Write, 0, 150, None).unwrap();
        assert_eq!(submits(&drain(&mut m)), [(0, 0, 100, 0)]);
        m.child_completed(C0, Ok(30)).unwrap();
        assert_eq!(submits(&drain(&mut m)), [(0, 30, 70, 30)]);
        m.child_completed(C0, Ok(70)).unwrap();
        assert_eq!(submits(&drain(&mut m)), [(0, 100, 50, 100)]);
        m.child_completed(C0, Ok(50)).unwrap();
        assert_eq!(completion(&drain(&mut m)).unwrap().bytes, 150);
    }

    #[test]
    fn read_eof_completes_ok_with_bytes_so_far() {
        let mut m =
            SplitMachine::new(plan(100), Mode::Serial, Direction::Read, 0, 300, None).unwrap();
        drain(&mut m);
        m.child_completed(C0, Ok(100)).unwrap();
        drain(&mut m);
        m.child_completed(C0, Ok(40)).unwrap();
        assert_eq!(submits(&drain(&mut m)), [(0, 140, 60, 140)]);
        m.child_completed(C0, Ok(0)).unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert_eq!(
            c,
            SplitOutcome {
                status: Ok(()),
                bytes: 140,
                transferred: 140
            }
        );
    }

    #[test]
    fn write_of_zero_bytes_fails_with_eio() {
        let mut m =
            SplitMachine::new(plan(100), Mode::Serial, Direction::Write, 0, 300, None).unwrap();
        drain(&mut m);
        m.child_completed(C0, Ok(0)).unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert_eq!(c.status, Err(Error::from_errno(libc::EIO)));
        assert_eq!(c.bytes, 0);
    }

    #[test]
    fn parallel_keeps_max_in_flight_and_refills() {
        let mode = Mode::Parallel { max_in_flight: 3 };
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 55, None).unwrap();
        let a = submits(&drain(&mut m));
        assert_eq!(a, [(0, 0, 10, 0), (1, 10, 10, 10), (2, 20, 10, 20)]);
        assert_eq!(m.in_flight(), 3);
        m.child_completed(C1, Ok(10)).unwrap();
        assert_eq!(submits(&drain(&mut m)), [(1, 30, 10, 30)]);
        m.child_completed(C0, Ok(10)).unwrap();
        m.child_completed(C2, Ok(10)).unwrap();
        assert_eq!(submits(&drain(&mut m)), [(0, 40, 10, 40), (2, 50, 5, 50)]);
        for c in [C1, C0, C2] {
            let len = if c == C2 { 5 } else { 10 };
            m.child_completed(c, Ok(len)).unwrap();
        }
        let c = completion(&drain(&mut m)).unwrap();
        assert_eq!(
            c,
            SplitOutcome {
                status: Ok(()),
                bytes: 55,
                transferred: 55
            }
        );
    }

    #[test]
    fn first_error_wins_cancels_the_rest_and_waits_for_them() {
        let mode = Mode::Parallel { max_in_flight: 3 };
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 100, None).unwrap();
        drain(&mut m);
        m.child_completed(C0, Ok(10)).unwrap(); // child 0 re-armed at 30, queued
        m.child_completed(C1, Err(Error::from_errno(libc::EIO)))
            .unwrap();
        // Child 0's queued submit was withdrawn; child 2 (in flight) is cancelled.
        let a = drain(&mut m);
        assert_eq!(a, [SplitAction::Cancel { child: C2 }]);
        assert!(!m.is_complete());
        // A later, different error does not replace the first.
        m.child_completed(C2, Err(Error::from_errno(libc::ENOSPC)))
            .unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert_eq!(c.status, Err(Error::from_errno(libc::EIO)));
        assert_eq!((c.bytes, c.transferred), (10, 10));
    }

    #[test]
    fn cancelled_children_that_finished_anyway_count() {
        let mode = Mode::Parallel { max_in_flight: 2 };
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 40, None).unwrap();
        drain(&mut m);
        m.handle(SplitEvent::Cancel).unwrap();
        assert_eq!(
            drain(&mut m),
            [
                SplitAction::Cancel { child: C0 },
                SplitAction::Cancel { child: C1 }
            ]
        );
        m.child_completed(C0, Ok(10)).unwrap(); // raced the cancel and won
        m.child_completed(C1, Err(Error::from_errno(libc::ECANCELED)))
            .unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert!(c.status.unwrap_err().is_cancelled());
        assert_eq!((c.bytes, c.transferred), (10, 10));
        // A late cancel is ignored.
        m.handle(SplitEvent::Cancel).unwrap();
        assert_eq!(m.poll_action(), None);
    }

    #[test]
    fn timeout_completes_timed_out() {
        let mut m =
            SplitMachine::new(plan(10), Mode::Serial, Direction::Read, 0, 40, SECOND).unwrap();
        drain(&mut m);
        m.handle(SplitEvent::Timeout).unwrap();
        assert_eq!(drain(&mut m), [SplitAction::Cancel { child: C0 }]);
        m.child_completed(C0, Err(ECANCELED)).unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert!(c.status.unwrap_err().is_timed_out());
    }

    #[test]
    fn the_timer_is_armed_first_and_awaited_after_the_last_child() {
        let mut m =
            SplitMachine::new(plan(10), Mode::Serial, Direction::Read, 0, 10, SECOND).unwrap();
        let a = drain(&mut m);
        assert_eq!(a[0], SplitAction::ArmTimer(Duration::from_secs(1)));
        assert_eq!(submits(&a), [(0, 0, 10, 0)]);
        m.child_completed(C0, Ok(10)).unwrap();
        // Every child is back: the outcome is final, the timer is asked to stop.
        assert_eq!(drain(&mut m), [SplitAction::CancelTimer]);
        assert!(!m.is_complete());
        assert_eq!(m.outcome().map(|c| c.status), Some(Ok(())));
        assert!(!m.cancel(), "not cancelable once every child is back");
        // It fired after all: it lost the race.
        m.handle(SplitEvent::Timeout).unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert_eq!((c.status, c.bytes), (Ok(()), 10));
        assert_eq!(m.poll_action(), None);
        // The next request arms it again; its cancellation completes it.
        m.restart(0, 10).unwrap();
        let a = drain(&mut m);
        assert_eq!(a[0], SplitAction::ArmTimer(Duration::from_secs(1)));
        m.child_completed(C0, Ok(10)).unwrap();
        assert_eq!(drain(&mut m), [SplitAction::CancelTimer]);
        m.handle(SplitEvent::TimerCancelled).unwrap();
        assert_eq!(completion(&drain(&mut m)).unwrap().status, Ok(()));
    }

    #[test]
    fn a_timer_reported_before_its_cancel_was_polled_withdraws_it() {
        let mut m =
            SplitMachine::new(plan(10), Mode::Serial, Direction::Read, 0, 10, SECOND).unwrap();
        drain(&mut m);
        m.child_completed(C0, Ok(10)).unwrap();
        // CancelTimer is queued; the timer's completion comes back first.
        m.handle(SplitEvent::Timeout).unwrap();
        let a = drain(&mut m);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(completion(&a).unwrap().status, Ok(()));
    }

    #[test]
    fn a_child_error_stands_over_a_later_deadline_and_cancel() {
        let mode = Mode::Parallel { max_in_flight: 2 };
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 40, SECOND).unwrap();
        drain(&mut m);
        m.child_completed(C0, Err(Error::from_errno(libc::EIO)))
            .unwrap();
        assert_eq!(drain(&mut m), [SplitAction::Cancel { child: C1 }]);
        m.handle(SplitEvent::Timeout).unwrap();
        assert!(m.cancel(), "still cancelable: a child is out");
        assert_eq!(drain(&mut m), [], "C1 already cancelled, the timer fired");
        m.child_completed(C1, Err(ECANCELED)).unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert_eq!(c.status, Err(Error::from_errno(libc::EIO)));
    }

    #[test]
    fn a_deadline_before_the_last_child_times_out_after_it() {
        let mut m =
            SplitMachine::new(plan(10), Mode::Serial, Direction::Write, 0, 40, SECOND).unwrap();
        drain(&mut m);
        m.handle(SplitEvent::Timeout).unwrap();
        assert_eq!(drain(&mut m), [SplitAction::Cancel { child: C0 }]);
        assert!(!m.is_complete(), "its child is still out");
        // A later cancel changes nothing.
        assert!(m.cancel());
        m.child_completed(C0, Ok(4)).unwrap();
        let a = drain(&mut m);
        assert_eq!(a.len(), 1, "no CancelTimer: it fired; {a:?}");
        let c = completion(&a).unwrap();
        assert!(c.status.unwrap_err().is_timed_out());
        assert_eq!((c.bytes, c.transferred), (4, 4));
    }

    #[test]
    fn a_cancel_before_the_timer_was_armed_withdraws_it() {
        let mut m =
            SplitMachine::new(plan(10), Mode::Serial, Direction::Read, 0, 40, SECOND).unwrap();
        assert!(m.cancel());
        let a = drain(&mut m);
        assert_eq!(a.len(), 1, "no ArmTimer, no submit: {a:?}");
        assert!(completion(&a).unwrap().status.unwrap_err().is_cancelled());
        // A zero-length request arms nothing.
        let mut m =
            SplitMachine::new(plan(10), Mode::Serial, Direction::Read, 0, 0, SECOND).unwrap();
        assert_eq!(completion(&drain(&mut m)).unwrap().status, Ok(()));
    }

    #[test]
    fn a_cancel_queued_for_a_child_that_came_back_is_withdrawn() {
        let mode = Mode::Parallel { max_in_flight: 2 };
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 40, None).unwrap();
        drain(&mut m);
        assert!(m.cancel());
        // Both cancels are queued; C0 comes back before the driver polled them.
        m.child_completed(C0, Ok(10)).unwrap();
        assert_eq!(drain(&mut m), [SplitAction::Cancel { child: C1 }]);
    }

    #[test]
    fn timer_events_without_a_timer_out_are_rejected() {
        let mut m =
            SplitMachine::new(plan(10), Mode::Serial, Direction::Read, 0, 10, None).unwrap();
        drain(&mut m);
        assert_eq!(m.handle(SplitEvent::Timeout), Err(NO_TIMER), "no deadline");
        let mut m =
            SplitMachine::new(plan(10), Mode::Serial, Direction::Read, 0, 10, SECOND).unwrap();
        assert_eq!(
            m.handle(SplitEvent::Timeout),
            Err(NO_TIMER),
            "not armed yet"
        );
        assert_eq!(m.handle(SplitEvent::TimerCancelled), Err(NO_TIMER));
        drain(&mut m);
        m.handle(SplitEvent::TimerCancelled).unwrap(); // refused by the ring
        assert_eq!(m.handle(SplitEvent::Timeout), Err(NO_TIMER), "already back");
        m.child_completed(C0, Ok(10)).unwrap();
        assert_eq!(completion(&drain(&mut m)).unwrap().status, Ok(()));
    }

    #[test]
    fn cancel_before_any_submit_was_polled_completes_at_once() {
        let mode = Mode::Parallel { max_in_flight: 4 };
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 40, None).unwrap();
        m.cancel();
        let a = drain(&mut m);
        assert_eq!(a.len(), 1, "{a:?}");
        let c = completion(&a).unwrap();
        assert!(c.status.unwrap_err().is_cancelled());
        assert_eq!(c.bytes, 0);
    }

    #[test]
    fn unexpected_ecanceled_is_an_error_like_any_other() {
        let mode = Mode::Parallel { max_in_flight: 2 };
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 40, None).unwrap();
        drain(&mut m);
        m.child_completed(C1, Err(ECANCELED)).unwrap();
        assert_eq!(drain(&mut m), [SplitAction::Cancel { child: C0 }]);
        m.child_completed(C0, Ok(10)).unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert!(c.status.unwrap_err().is_cancelled());
        assert_eq!(c.bytes, 10);
    }

    #[test]
    fn impossible_events_are_rejected_and_change_nothing() {
        let mode = Mode::Parallel { max_in_flight: 2 };
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 40, None).unwrap();
        // Submits queued but not polled: the driver cannot have a completion yet.
        assert_eq!(m.child_completed(C0, Ok(10)), Err(NOT_IN_FLIGHT));
        drain(&mut m);
        assert_eq!(m.child_completed(C2, Ok(1)), Err(NOT_IN_FLIGHT));
        assert_eq!(
            m.child_completed(ChildId(u32::MAX), Ok(1)),
            Err(NOT_IN_FLIGHT)
        );
        assert_eq!(m.child_completed(C0, Ok(11)), Err(TOO_MANY_BYTES));
        assert_eq!(m.in_flight(), 2);
        m.child_completed(C0, Ok(10)).unwrap();
        assert_eq!(m.child_completed(C0, Ok(10)), Err(NOT_IN_FLIGHT), "twice");
    }

    #[test]
    fn construction_validates() {
        let p = TransferPlan::builder().align(512).build().unwrap();
        let e = SplitMachine::new(p, Mode::Serial, Direction::Read, 1, 512, None).unwrap_err();
        assert!(matches!(
            e.kind(),
            ErrorKind::Misaligned { what: "offset", .. }
        ));
        for n in [0, MAX_IN_FLIGHT + 1] {
            let mode = Mode::Parallel { max_in_flight: n };
            assert!(SplitMachine::new(p, mode, Direction::Read, 0, 512, None).is_err());
        }
        let mut m = SplitMachine::new(p, Mode::Serial, Direction::Read, 0, 0, None).unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert_eq!(
            c,
            SplitOutcome {
                status: Ok(()),
                bytes: 0,
                transferred: 0
            }
        );
    }

    #[test]
    fn restart_reuses_the_machine() {
        let mut m =
            SplitMachine::new(plan(10), Mode::Serial, Direction::Read, 0, 10, None).unwrap();
        assert!(m.restart(0, 10).is_err(), "still running");
        drain(&mut m);
        m.child_completed(C0, Ok(10)).unwrap();
        assert!(m.restart(0, 10).is_err(), "completion not polled");
        drain(&mut m);
        m.restart(100, 20).unwrap();
        assert_eq!(m.request(), (100, 20));
        assert_eq!(submits(&drain(&mut m)), [(0, 100, 10, 0)]);
    }

    /// The reference model for the randomized test: the parent's expected completion from
    /// a per-byte view of what happened.
    mod model {
        use super::*;
        use crate::split::oracle::SplitOracle;

        /// Runs the machine against a simulated device: `eof` ends the file; each child
        /// submission moves `min(len, budget)` bytes where the budget comes from the PRNG;
        /// errors, cancels and deadlines are injected at random. The oracle checks the
        /// machine at every step (including that the status is the first error, cancel or
        /// deadline); this checks the bytes against end of file.
        pub(super) fn run(seed: u64) {
            let mut rng = fastrand::Rng::with_seed(seed | 1);
            let slots = 1 + rng.u64(..5) as u32;
            let mode = if rng.u64(..2) == 0 && slots == 1 {
                Mode::Serial
            } else {
                Mode::Parallel {
                    max_in_flight: slots,
                }
            };
            let direction = if rng.u64(..2) == 0 {
                Direction::Read
            } else {
                Direction::Write
            };
            let p = TransferPlan::builder()
                .max_chunk(1 + rng.u64(..64))
                .boundary(if rng.u64(..2) == 0 {
                    0
                } else {
                    1 + rng.u64(..100)
                })
                .build()
                .unwrap();
            let start = rng.u64(..1000);
            let len = rng.u64(..600);
            let eof = start + rng.u64(..len + len / 2 + 1);
            // A deadline on half the runs (drawn after the rest: the other draws stay).
            let deadline = (rng.u64(..2) == 0).then_some(Duration::from_millis(1));
            // The oracle checks every action and event: completion once, after the last
            // child and the timer; status, bytes and transferred; nothing moved twice.
            let mut o = SplitOracle::new(p, mode, direction, start, len, deadline).unwrap();
            let check = |r: crate::split::oracle::Check| {
                r.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            };
            // The action queue never grows past what `new` reserved (the oracle checks it
            // after every event).
            assert!(o.machine().action_capacity() > 2 * slots as usize);
            // Byte map of what the device moved, relative to `start`.
            let mut moved = vec![false; len as usize];
            for _step in 0..100_000 {
                check(o.poll(usize::MAX));
                if o.in_flight().is_empty() {
                    break;
                }
                // Pick a random in-flight child and a random fate.
                let k = rng.u64(..o.in_flight().len() as u64) as usize;
                let s = o.in_flight()[k];
                let (off, l) = (s.offset, s.len);
                let roll = rng.u64(..100);
                let result = if roll < 3 {
                    Err(Error::from_errno(libc::EIO))
                } else if s.cancelled && roll < 60 {
                    Err(Error::from_errno(libc::ECANCELED))
                } else {
                    let avail = if direction == Direction::Read {
                        eof.saturating_sub(off).min(l)
                    } else {
                        l
                    };
                    // A read returns 0 only at end of file; a write may stall (rarely).
                    let n = if direction == Direction::Write && roll < 5 {
                        0
                    } else if roll < 30 && avail > 0 {
                        1 + rng.u64(..avail)
                    } else {
                        avail
                    };
                    for b in off..off + n {
                        moved[(b - start) as usize] = true;
                    }
                    Ok(n)
                };
                check(o.complete(k, result));
                if rng.u64(..200) == 0 {
                    if rng.u64(..2) == 0 || !o.timer_out() {
                        check(o.cancel());
                    } else {
                        check(o.timer_fired());
                    }
                }
            }
            // Sometimes the deadline fires after the children are back: it loses the race.
            if o.timer_out() && rng.u64(..2) == 0 {
                check(o.timer_fired());
            }
            let c = o.finish().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(o.machine().is_complete());
            let total = moved.iter().filter(|b| **b).count() as u64;
            let prefix = moved.iter().take_while(|b| **b).count() as u64;
            assert_eq!(c.transferred, total, "seed {seed}");
            // The reported prefix was all moved; on success it is everything (or up to EOF).
            assert!(c.bytes <= prefix, "seed {seed}: {c:?} prefix {prefix}");
            if c.status.is_ok() {
                let want = if direction == Direction::Read {
                    (eof.max(start) - start).min(len)
                } else {
                    len
                };
                // Short transfers are continued, so success means every byte (up to end
                // of file on a read).
                assert_eq!(c.bytes, want, "seed {seed}: {c:?}");
                assert!(prefix >= want, "seed {seed}");
            }
        }
    }

    #[test]
    fn randomized_against_a_simulated_device() {
        let runs = if cfg!(miri) { 20 } else { 3_000 };
        for seed in 0..runs {
            model::run(seed * 0x9E37_79B9 + 1);
        }
    }

    /// Fuzz-style: arbitrary events, including impossible ones, never panic, and the
    /// parent completes at most once.
    #[test]
    fn arbitrary_event_sequences_never_panic() {
        let mut rng = fastrand::Rng::with_seed(12345);
        for _ in 0..2_000 {
            let mode = Mode::Parallel {
                max_in_flight: 1 + rng.u64(..4) as u32,
            };
            let mut m = SplitMachine::new(
                plan(1 + rng.u64(..50)),
                mode,
                Direction::Read,
                0,
                rng.u64(..300),
                None,
            )
            .unwrap();
            let mut completes = 0;
            let cap = m.actions.capacity();
            for _ in 0..60 {
                let ev = match rng.u64(..10) {
                    0 => SplitEvent::Cancel,
                    1 => SplitEvent::Timeout,
                    2 => SplitEvent::ChildCompleted {
                        child: ChildId(rng.u64(..6) as u32),
                        result: Err(Error::from_errno(1 + rng.u64(..199) as i32)),
                    },
                    3 => SplitEvent::TimerCancelled,
                    _ => SplitEvent::ChildCompleted {
                        child: ChildId(rng.u64(..6) as u32),
                        result: Ok(rng.u64(..80)),
                    },
                };
                let _ = m.handle(ev);
                assert_eq!(m.actions.capacity(), cap, "the action queue grew");
                if rng.u64(..3) != 0 {
                    while let Some(a) = m.poll_action() {
                        completes += usize::from(matches!(a, SplitAction::Complete(_)));
                    }
                }
            }
            assert!(completes <= 1);
        }
    }
}
