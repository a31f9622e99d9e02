//! The split driver state machine ([`SplitMachine`]).

use std::collections::VecDeque;

use super::plan::TransferPlan;
use crate::error::{Error, ErrorKind, Result};

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

/// Which way the bytes move. It matters for a 0-byte child completion: end of file on a
/// read, a failure on a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the device into memory.
    Read,
    /// From memory to the device.
    Write,
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
pub enum Event {
    /// A child's completion came back: the bytes it moved, or its error.
    ChildCompleted {
        /// Which child.
        child: ChildId,
        /// Bytes moved (at most the submitted length), or the error.
        result: Result<u64>,
    },
    /// The parent request was cancelled.
    Cancel,
    /// The parent request's deadline expired.
    Timeout,
}

impl Event {
    /// The event for a child's CQE result: `res >= 0` is a byte count, `res < 0` a negated
    /// errno.
    pub const fn from_cqe(child: ChildId, res: i32) -> Event {
        let result = if res >= 0 {
            Ok(res as u64)
        } else {
            Err(Error::from_errno(res.wrapping_neg()))
        };
        Event::ChildCompleted { child, result }
    }
}

/// The parent request's outcome, carried by [`Action::Complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
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
pub enum Action {
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
    /// Complete the parent. Emitted exactly once, after the last child's completion.
    Complete(Completion),
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

const NOT_IN_FLIGHT: Error = Error::not_in_progress("split child");
const TOO_MANY_BYTES: Error = Error::new(ErrorKind::ExcessBytes);

/// The split driver: one parent request carried out as chunk-sized child requests.
///
/// [`SplitMachine`] is sans-I/O, in the style of `quinn-proto`: feed it [`Event`]s
/// (a child completed, the parent was cancelled or timed out) with
/// [`SplitMachine::handle`], and pull the [`Action`]s it wants carried out (submit a child,
/// cancel a child, complete the parent) with [`SplitMachine::poll_action`] until it returns
/// `None`. It never makes a syscall; the ring driver turns actions into SQEs and CQEs into
/// events.
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
/// - **First error wins.** The first child error (or parent cancel, or timeout) fixes the
///   parent's status; every other child in flight is cancelled; children not yet submitted
///   are dropped. Later errors, and the `ECANCELED` completions of the children it
///   cancelled, change nothing.
/// - **The parent completes once, after its last child.** [`Action::Complete`] is emitted
///   exactly once, only when no child is in flight.
/// - **Cancel** ([`Event::Cancel`]) completes the parent with [`ErrorKind::Cancelled`] and
///   a timeout ([`Event::Timeout`]) with [`ErrorKind::TimedOut`] (unless an error came
///   first); both after the children's completions come back.
///
/// The byte counts of the [`Completion`]: `bytes` is the length of the request's prefix
/// that was transferred without a gap (what a caller can use: on a read, the valid bytes
/// from the start of the buffer); `transferred` is every byte any child moved, which can be
/// more when children after a gap succeeded.
///
/// # Allocation
///
/// [`SplitMachine::new`] allocates the child table and an action queue with room for every
/// action that can be pending at once (a submit and a cancel per child, and the
/// completion). After that, handling events and polling actions never allocates, and
/// [`SplitMachine::restart`] reuses both for the next request.
///
/// # Totality
///
/// Every method is total: on any sequence of events (the fuzz target's input) the machine
/// never panics. An event that cannot happen — a completion for a child that is not in
/// flight (never submitted, its submit not yet polled, or already completed), or one that
/// reports more bytes than were submitted — is rejected with
/// [`ErrorKind::NotInProgress`] or [`ErrorKind::ExcessBytes`] and changes nothing. Cancel and timeout after the
/// parent completed are accepted and ignored (the benign race of a late cancel).
///
/// # Example
///
/// ```
/// use iocomplete::split::{Action, Direction, Event, Mode, SplitMachine, TransferPlan};
/// let plan = TransferPlan::builder().max_chunk(4096).build()?;
/// let mut m = SplitMachine::new(plan, Mode::Serial, Direction::Read, 0, 10_000)?;
/// let mut done = None;
/// while done.is_none() {
///     match m.poll_action() {
///         // A real driver submits an SQE here; pretend the device moves every byte.
///         Some(Action::Submit { child, len, .. }) => {
///             m.handle(Event::ChildCompleted { child, result: Ok(len) })?
///         }
///         Some(Action::Complete(c)) => done = Some(c),
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
    /// The parent's completion was emitted.
    completed: bool,
    children: Vec<Child>,
    actions: VecDeque<Action>,
}

impl SplitMachine {
    /// A machine for the request of `len` bytes at device offset `offset`, with the first
    /// submits already queued (poll them). A zero-length request completes at once with
    /// `Ok(())` and 0 bytes.
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
            start: offset,
            end: offset,
            next: offset,
            hole: offset,
            transferred: 0,
            failure: None,
            completed: false,
            children: vec![IDLE; slots],
            actions: VecDeque::with_capacity(2 * slots + 1),
        };
        m.begin(offset, len);
        Ok(m)
    }

    /// Reuse this machine (its child table and action queue: no allocation) for a new
    /// request with the same plan, mode and direction.
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
        self.completed = false;
        self.children.fill(IDLE);
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
    /// (see *Totality* on [`SplitMachine`]);
    /// the machine is unchanged.
    pub fn handle(&mut self, event: Event) -> Result<()> {
        match event {
            Event::ChildCompleted { child, result } => self.child_completed(child, result),
            Event::Cancel => {
                self.abort(Error::new(ErrorKind::Cancelled));
                Ok(())
            }
            Event::Timeout => {
                self.abort(Error::new(ErrorKind::TimedOut));
                Ok(())
            }
        }
    }

    /// Shorthand for [`Event::ChildCompleted`].
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

    /// Shorthand for [`Event::Cancel`]: cancel the parent. Ignored once it completed.
    pub fn cancel(&mut self) {
        self.abort(Error::new(ErrorKind::Cancelled));
    }

    /// The next action to carry out, in order, or `None` when there is nothing to do until
    /// the next event.
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.actions.pop_front()?;
        if let Action::Submit { child, .. } = action {
            if let Some(c) = self.children.get_mut(child.0 as usize) {
                c.state = ChildState::InFlight;
            }
        }
        Some(action)
    }

    /// True once [`Action::Complete`] was emitted (it may still be waiting to be polled).
    pub const fn is_complete(&self) -> bool {
        self.completed
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
        self.actions.push_back(Action::Submit {
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
        if self.completed || self.failure.is_some() {
            return;
        }
        self.failure = Some(error);
        for i in 0..self.children.len() {
            let c = self.children[i];
            match c.state {
                ChildState::Idle => {}
                ChildState::Queued => {
                    let child = ChildId(i as u32);
                    self.actions
                        .retain(|a| !matches!(a, Action::Submit { child: x, .. } if *x == child));
                    self.children[i].state = ChildState::Idle;
                    self.note_hole(c.cur);
                }
                ChildState::InFlight => {
                    if !c.cancel_sent {
                        self.children[i].cancel_sent = true;
                        self.actions.push_back(Action::Cancel {
                            child: ChildId(i as u32),
                        });
                    }
                }
            }
        }
        self.maybe_complete();
    }

    /// Emit the parent's completion if it is due: no child in flight and nothing left to
    /// start.
    fn maybe_complete(&mut self) {
        if self.completed || self.children.iter().any(|c| c.state != ChildState::Idle) {
            return;
        }
        if self.failure.is_none() && self.next < self.hole && self.arm_next(0) {
            // Unreachable by construction (a slot is re-armed whenever its chunk is done),
            // kept so that no event sequence can strand the request.
            return;
        }
        self.completed = true;
        self.actions.push_back(Action::Complete(Completion {
            status: self.failure.map_or(Ok(()), Err),
            bytes: self.hole.min(self.next) - self.start,
            transferred: self.transferred,
        }));
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

    fn drain(m: &mut SplitMachine) -> Vec<Action> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    fn submits(actions: &[Action]) -> Vec<(u32, u64, u64, u64)> {
        actions
            .iter()
            .filter_map(|a| match *a {
                Action::Submit {
                    child,
                    offset,
                    len,
                    pos,
                } => Some((child.0, offset, len, pos)),
                _ => None,
            })
            .collect()
    }

    fn completion(actions: &[Action]) -> Option<Completion> {
        actions.iter().find_map(|a| match a {
            Action::Complete(c) => Some(*c),
            _ => None,
        })
    }

    const C0: ChildId = ChildId(0);
    const C1: ChildId = ChildId(1);
    const C2: ChildId = ChildId(2);

    #[test]
    fn serial_reuses_one_child_in_order() {
        let mut m = SplitMachine::new(plan(100), Mode::Serial, Direction::Read, 1000, 250).unwrap();
        let mut seen = Vec::new();
        loop {
            let a = drain(&mut m);
            if let Some(c) = completion(&a) {
                assert_eq!(
                    c,
                    Completion {
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
        let mut m = SplitMachine::new(plan(100), Mode::Serial, Direction::Write, 0, 150).unwrap();
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
        let mut m = SplitMachine::new(plan(100), Mode::Serial, Direction::Read, 0, 300).unwrap();
        drain(&mut m);
        m.child_completed(C0, Ok(100)).unwrap();
        drain(&mut m);
        m.child_completed(C0, Ok(40)).unwrap();
        assert_eq!(submits(&drain(&mut m)), [(0, 140, 60, 140)]);
        m.child_completed(C0, Ok(0)).unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert_eq!(
            c,
            Completion {
                status: Ok(()),
                bytes: 140,
                transferred: 140
            }
        );
    }

    #[test]
    fn write_of_zero_bytes_fails_with_eio() {
        let mut m = SplitMachine::new(plan(100), Mode::Serial, Direction::Write, 0, 300).unwrap();
        drain(&mut m);
        m.child_completed(C0, Ok(0)).unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert_eq!(c.status, Err(Error::from_errno(libc::EIO)));
        assert_eq!(c.bytes, 0);
    }

    #[test]
    fn parallel_keeps_max_in_flight_and_refills() {
        let mode = Mode::Parallel { max_in_flight: 3 };
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 55).unwrap();
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
            Completion {
                status: Ok(()),
                bytes: 55,
                transferred: 55
            }
        );
    }

    #[test]
    fn first_error_wins_cancels_the_rest_and_waits_for_them() {
        let mode = Mode::Parallel { max_in_flight: 3 };
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 100).unwrap();
        drain(&mut m);
        m.child_completed(C0, Ok(10)).unwrap(); // child 0 re-armed at 30, queued
        m.child_completed(C1, Err(Error::from_errno(libc::EIO)))
            .unwrap();
        // Child 0's queued submit was withdrawn; child 2 (in flight) is cancelled.
        let a = drain(&mut m);
        assert_eq!(a, [Action::Cancel { child: C2 }]);
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
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 40).unwrap();
        drain(&mut m);
        m.handle(Event::Cancel).unwrap();
        assert_eq!(
            drain(&mut m),
            [Action::Cancel { child: C0 }, Action::Cancel { child: C1 }]
        );
        m.child_completed(C0, Ok(10)).unwrap(); // raced the cancel and won
        m.child_completed(C1, Err(Error::from_errno(libc::ECANCELED)))
            .unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert!(c.status.unwrap_err().is_cancelled());
        assert_eq!((c.bytes, c.transferred), (10, 10));
        // A late cancel is ignored.
        m.handle(Event::Cancel).unwrap();
        assert_eq!(m.poll_action(), None);
    }

    #[test]
    fn timeout_completes_timed_out() {
        let mut m = SplitMachine::new(plan(10), Mode::Serial, Direction::Read, 0, 40).unwrap();
        drain(&mut m);
        m.handle(Event::Timeout).unwrap();
        assert_eq!(drain(&mut m), [Action::Cancel { child: C0 }]);
        m.handle(Event::from_cqe(C0, -libc::ECANCELED)).unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert!(c.status.unwrap_err().is_timed_out());
    }

    #[test]
    fn cancel_before_any_submit_was_polled_completes_at_once() {
        let mode = Mode::Parallel { max_in_flight: 4 };
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 40).unwrap();
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
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 40).unwrap();
        drain(&mut m);
        m.handle(Event::from_cqe(C1, -libc::ECANCELED)).unwrap();
        assert_eq!(drain(&mut m), [Action::Cancel { child: C0 }]);
        m.handle(Event::from_cqe(C0, 10)).unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert!(c.status.unwrap_err().is_cancelled());
        assert_eq!(c.bytes, 10);
    }

    #[test]
    fn impossible_events_are_rejected_and_change_nothing() {
        let mode = Mode::Parallel { max_in_flight: 2 };
        let mut m = SplitMachine::new(plan(10), mode, Direction::Read, 0, 40).unwrap();
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
        let e = SplitMachine::new(p, Mode::Serial, Direction::Read, 1, 512).unwrap_err();
        assert!(matches!(
            e.kind(),
            ErrorKind::Misaligned { what: "offset", .. }
        ));
        for n in [0, MAX_IN_FLIGHT + 1] {
            let mode = Mode::Parallel { max_in_flight: n };
            assert!(SplitMachine::new(p, mode, Direction::Read, 0, 512).is_err());
        }
        let mut m = SplitMachine::new(p, Mode::Serial, Direction::Read, 0, 0).unwrap();
        let c = completion(&drain(&mut m)).unwrap();
        assert_eq!(
            c,
            Completion {
                status: Ok(()),
                bytes: 0,
                transferred: 0
            }
        );
    }

    #[test]
    fn restart_reuses_the_machine() {
        let mut m = SplitMachine::new(plan(10), Mode::Serial, Direction::Read, 0, 10).unwrap();
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

        /// Runs the machine against a simulated device: `eof` ends the file; each child
        /// submission moves `min(len, budget)` bytes where the budget comes from the PRNG;
        /// errors and cancels are injected at random. Returns the completion, having
        /// checked the machine's invariants at every step.
        pub(super) fn run(seed: u64) {
            let mut rng = Rng(seed | 1);
            let slots = 1 + rng.below(5) as u32;
            let mode = if rng.below(2) == 0 && slots == 1 {
                Mode::Serial
            } else {
                Mode::Parallel {
                    max_in_flight: slots,
                }
            };
            let direction = if rng.below(2) == 0 {
                Direction::Read
            } else {
                Direction::Write
            };
            let p = TransferPlan::builder()
                .max_chunk(1 + rng.below(64))
                .boundary(if rng.below(2) == 0 {
                    0
                } else {
                    1 + rng.below(100)
                })
                .build()
                .unwrap();
            let start = rng.below(1000);
            let len = rng.below(600);
            let eof = start + rng.below(len + len / 2 + 1);
            let mut m = SplitMachine::new(p, mode, direction, start, len).unwrap();
            // The action queue never grows past what `new` reserved.
            let cap = m.actions.capacity();
            assert!(cap > 2 * slots as usize);
            // Byte map of what the device moved, relative to `start`.
            let mut moved = vec![false; len as usize];
            // In-flight submissions: (child, offset, len).
            let mut flight: Vec<(ChildId, u64, u64)> = Vec::new();
            let mut cancelled: Vec<ChildId> = Vec::new();
            let mut first_err: Option<Error> = None;
            let mut done = None;
            for _step in 0..100_000 {
                while let Some(a) = m.poll_action() {
                    match a {
                        Action::Submit {
                            child,
                            offset,
                            len: l,
                            pos,
                        } => {
                            assert!(done.is_none(), "submit after completion");
                            assert!(l > 0 && pos == offset - start && offset + l <= start + len);
                            assert!(!flight.iter().any(|f| f.0 == child), "child armed twice");
                            cancelled.retain(|c| *c != child);
                            flight.push((child, offset, l));
                        }
                        Action::Cancel { child } => {
                            assert!(flight.iter().any(|f| f.0 == child), "cancel of idle child");
                            cancelled.push(child);
                        }
                        Action::Complete(c) => {
                            assert!(done.is_none(), "completed twice");
                            assert!(flight.is_empty(), "completed before its last child");
                            done = Some(c);
                        }
                    }
                }
                assert!(m.in_flight() <= slots as usize);
                assert_eq!(m.actions.capacity(), cap);
                if flight.is_empty() {
                    break;
                }
                // Pick a random in-flight child and a random fate.
                let k = rng.below(flight.len() as u64) as usize;
                let (child, off, l) = flight.swap_remove(k);
                let roll = rng.below(100);
                let result = if roll < 3 {
                    Err(Error::from_errno(libc::EIO))
                } else if cancelled.contains(&child) && roll < 60 {
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
                        1 + rng.below(avail)
                    } else {
                        avail
                    };
                    for b in off..off + n {
                        moved[(b - start) as usize] = true;
                    }
                    Ok(n)
                };
                if let Err(e) = result {
                    if !(cancelled.contains(&child) && e.is_cancelled()) {
                        first_err.get_or_insert(e);
                    }
                } else if result == Ok(0) && direction == Direction::Write {
                    first_err.get_or_insert(Error::from_errno(libc::EIO));
                }
                m.child_completed(child, result).unwrap();
                if rng.below(200) == 0 {
                    let ev = if rng.below(2) == 0 {
                        Event::Cancel
                    } else {
                        Event::Timeout
                    };
                    if !m.is_complete() {
                        first_err.get_or_insert(match ev {
                            Event::Cancel => Error::new(ErrorKind::Cancelled),
                            _ => Error::new(ErrorKind::TimedOut),
                        });
                    }
                    m.handle(ev).unwrap();
                }
            }
            let c = done.expect("the parent completed");
            assert!(m.is_complete());
            let total = moved.iter().filter(|b| **b).count() as u64;
            let prefix = moved.iter().take_while(|b| **b).count() as u64;
            assert_eq!(c.transferred, total, "seed {seed}");
            assert_eq!(c.status, first_err.map_or(Ok(()), Err), "seed {seed}");
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

        pub(super) struct Rng(pub(super) u64);
        impl Rng {
            pub(super) fn below(&mut self, n: u64) -> u64 {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
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
        let mut rng = model::Rng(12345);
        for _ in 0..2_000 {
            let mode = Mode::Parallel {
                max_in_flight: 1 + rng.below(4) as u32,
            };
            let mut m = SplitMachine::new(
                plan(1 + rng.below(50)),
                mode,
                Direction::Read,
                0,
                rng.below(300),
            )
            .unwrap();
            let mut completes = 0;
            let cap = m.actions.capacity();
            for _ in 0..60 {
                let ev = match rng.below(10) {
                    0 => Event::Cancel,
                    1 => Event::Timeout,
                    2 => Event::from_cqe(ChildId(rng.below(6) as u32), -(rng.below(200) as i32)),
                    _ => Event::from_cqe(ChildId(rng.below(6) as u32), rng.below(80) as i32),
                };
                let _ = m.handle(ev);
                assert_eq!(m.actions.capacity(), cap, "the action queue grew");
                if rng.below(3) != 0 {
                    while let Some(a) = m.poll_action() {
                        completes += usize::from(matches!(a, Action::Complete(_)));
                    }
                }
            }
            assert!(completes <= 1);
        }
    }
}
