//! The DMA-style transaction state machine.

use std::collections::VecDeque;

use super::sg::{self, Cursor, Segment, Transfer, TransferId};
use crate::error::{Error, ErrorKind, Result};
use crate::gate::{CompletionGate, Status};
use crate::ring::{Direction, MAX_TRANSFER};

/// Most iovecs in one transfer (`UIO_MAXIOV`).
pub const MAX_SEGMENTS: u32 = 1024;
/// Most transfers a transaction may keep in flight.
pub const MAX_IN_FLIGHT: u32 = 1024;

/// How a transaction executes: transfer limits, concurrency, and whether a deadline timer
/// is armed. Setters take values; [`Transaction::new`] validates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaConfig {
    max_transfer: u64,
    max_segments: u32,
    max_in_flight: u32,
    timer: bool,
}

impl DmaConfig {
    /// Defaults: transfers up to [`MAX_TRANSFER`] bytes and [`MAX_SEGMENTS`] iovecs, one
    /// transfer in flight at a time (the DMA model), no timer.
    pub const fn new() -> DmaConfig {
        DmaConfig {
            max_transfer: MAX_TRANSFER,
            max_segments: MAX_SEGMENTS,
            max_in_flight: 1,
            timer: false,
        }
    }

    /// Largest transfer in bytes, `1..=`[`MAX_TRANSFER`]. A longer segment is split.
    pub const fn max_transfer(mut self, bytes: u64) -> DmaConfig {
        self.max_transfer = bytes;
        self
    }

    /// Most segments (iovecs) per transfer, `1..=`[`MAX_SEGMENTS`].
    pub const fn max_segments(mut self, n: u32) -> DmaConfig {
        self.max_segments = n;
        self
    }

    /// Transfers in flight at once, `1..=`[`MAX_IN_FLIGHT`].
    pub const fn max_in_flight(mut self, n: u32) -> DmaConfig {
        self.max_in_flight = n;
        self
    }

    /// The largest transfer, in bytes.
    pub const fn max_transfer_len(&self) -> u64 {
        self.max_transfer
    }

    /// The most segments per transfer.
    pub const fn max_segments_count(&self) -> u32 {
        self.max_segments
    }

    /// The most transfers in flight.
    pub const fn max_in_flight_count(&self) -> u32 {
        self.max_in_flight
    }

    /// Whether a deadline timer is armed.
    pub const fn has_timer(&self) -> bool {
        self.timer
    }

    /// The driver arms a deadline timer for the transaction (a linked or standalone
    /// timeout): the transaction then holds a reference for it, and completes only once
    /// the timer fired ([`DmaEvent::Timeout`]) or its cancellation came back
    /// ([`DmaEvent::TimerCancelled`]).
    pub const fn timer(mut self, armed: bool) -> DmaConfig {
        self.timer = armed;
        self
    }
}

impl Default for DmaConfig {
    fn default() -> DmaConfig {
        DmaConfig::new()
    }
}

/// Something that happened to a transaction; fed with [`Transaction::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaEvent {
    /// A transfer's completion came back ([`Transaction::transfer_completed`]).
    TransferCompleted {
        /// Which transfer.
        id: TransferId,
        /// How it ended: `Ok(())` (possibly short:
        /// see `bytes`), an error of kind [`Cancelled`](crate::ErrorKind::Cancelled) for a
        /// cancelled transfer, or the device's error.
        status: Result<()>,
        /// Bytes it moved (at most its length).
        bytes: u64,
    },
    /// A transfer's completion came back and the driver declares it the last one
    /// ([`Transaction::completed_final`]).
    CompletedFinal {
        /// Which transfer.
        id: TransferId,
        /// How it ended (as for `TransferCompleted`).
        status: Result<()>,
        /// Bytes it moved (at most its length).
        bytes: u64,
    },
    /// Cancel the transaction ([`Transaction::cancel`]): status `Cancelled`.
    Cancel,
    /// The deadline timer fired ([`Transaction::timeout`]).
    Timeout,
    /// The timer's cancellation came back: it will never fire
    /// ([`Transaction::timer_cancelled`]).
    TimerCancelled,
}

impl DmaEvent {
    /// The event for a transfer's completion as the ring reports it: the bytes it moved,
    /// or its error (a cancel is an error of kind [`Cancelled`](crate::ErrorKind::Cancelled))
    /// and none.
    pub fn from_result(id: TransferId, result: Result<u32>) -> DmaEvent {
        DmaEvent::TransferCompleted {
            id,
            status: result.map(drop),
            bytes: result.map_or(0, u64::from),
        }
    }
}

/// The request's outcome, carried by [`DmaAction::Complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaOutcome {
    /// `Ok(())`, or why not: the first device error as it was reported, `Cancelled` (a
    /// cancel or a cancelled transfer), `TimedOut`.
    pub status: Result<()>,
    /// Bytes actually moved by all transfers, whatever the status.
    pub bytes: u64,
}

/// Something the driver must do for a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaAction {
    /// Submit this transfer (one `readv`/`writev` of its [`Transfer::pieces`]).
    Submit(Transfer),
    /// Cancel this in-flight transfer; its completion still comes back.
    Cancel(TransferId),
    /// Cancel the deadline timer (the final transfer came back first). Report the result
    /// with [`DmaEvent::TimerCancelled`], or [`DmaEvent::Timeout`] if it fired anyway.
    CancelTimer,
    /// Complete the request. Emitted exactly once, when the last completion reference is
    /// dropped.
    Complete(DmaOutcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Idle,
    /// Its `Submit` is queued, not yet polled.
    Queued,
    /// Submitted: its completion will come back.
    InFlight,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    state: SlotState,
    transfer: Transfer,
    cancel_sent: bool,
}

const IDLE: Slot = Slot {
    state: SlotState::Idle,
    transfer: Transfer {
        id: TransferId::new(0),
        device_offset: 0,
        len: 0,
        first_segment: 0,
        first_skip: 0,
        segment_count: 0,
    },
    cancel_sent: false,
};

const NOT_IN_FLIGHT: Error = Error::not_in_progress("dma transfer");
const TOO_MANY_BYTES: Error = Error::new(ErrorKind::ExcessBytes);
const NO_TIMER: Error = Error::not_in_progress("dma timer");

/// A scatter/gather transaction executed as transfers; sans-I/O.
///
/// See the [module documentation](super) for the rules. `S` is the segment list: a
/// `&[Segment]`, a `Vec<Segment>`, an array — anything that derefs to a slice.
///
/// DmaOutcome references (a [`CompletionGate`]): the *execution* path holds one until the
/// final transfer came back; the *cancel* path holds one while the transaction is
/// cancelable ([`cancel`](Self::cancel) drops it by running; the final transfer drops it by
/// making the transaction non-cancelable); the *timer* holds one when armed
/// ([`timeout`](Self::timeout) drops it by firing; [`timer_cancelled`](Self::timer_cancelled)
/// when it will never fire). [`DmaAction::Complete`] goes out when the last one drops.
#[derive(Debug)]
pub struct Transaction<S> {
    segments: S,
    config: DmaConfig,
    direction: Direction,
    /// Where the next new transfer starts.
    cursor: Cursor,
    /// Total bytes described by the list.
    total: u64,
    /// Bytes moved so far.
    bytes: u64,
    next_id: u32,
    slots: Vec<Slot>,
    actions: VecDeque<DmaAction>,
    gate: CompletionGate,
    /// The cancel path's reference is still held (the transaction is cancelable).
    cancel_ref: bool,
    /// The timer's reference is still held (armed, neither fired nor cancelled).
    timer_ref: bool,
    /// No new transfers start from the cursor (end of file, or `stopping`).
    no_new: bool,
    /// Hard stop — device error, cancel, timeout, a final transfer declared: transfers in
    /// flight are cancelled and short ones not continued.
    stopping: bool,
    /// Lowest device offset where a read hit end of file (`u64::MAX` if none): short
    /// transfers continue only below it.
    eof_at: u64,
    /// Per segment: the lowest offset within it of a byte that will never move (a transfer
    /// that ended short without a resubmission, failed, was cancelled or withdrawn);
    /// `u64::MAX` while there is none. Bounds [`segment_moved`](Self::segment_moved).
    holes: Vec<u64>,
    /// The first device error: it forces the status (later ones do not) and is the
    /// outcome's error, typed as it was reported.
    error: Option<Error>,
    /// A transfer came back `Cancelled` (the status if nobody set one).
    saw_cancelled: bool,
    /// The final transfer came back: the DMA part is over; buffers may be released.
    finished: bool,
    outcome: Option<DmaOutcome>,
}

impl<S: AsRef<[Segment]>> Transaction<S> {
    /// A transaction over `segments`, moving data in `direction`, with the first transfers
    /// already queued (poll them).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::OutOfRange`] for a config value out
    /// of range, [`ErrorKind::ZeroLength`] for a list that
    /// moves no bytes, [`ErrorKind::OffsetOutOfRange`]
    /// for a segment whose device range overflows,
    /// [`ErrorKind::InvalidInput`] if the lengths add up
    /// past `u64::MAX`.
    pub fn new(segments: S, direction: Direction, config: DmaConfig) -> Result<Transaction<S>> {
        if config.max_transfer == 0 || config.max_transfer > MAX_TRANSFER {
            return Err(Error::out_of_range("max_transfer", 1, MAX_TRANSFER));
        }
        if config.max_segments == 0 || config.max_segments > MAX_SEGMENTS {
            return Err(Error::out_of_range("max_segments", 1, MAX_SEGMENTS.into()));
        }
        if config.max_in_flight == 0 || config.max_in_flight > MAX_IN_FLIGHT {
            return Err(Error::out_of_range(
                "max_in_flight",
                1,
                MAX_IN_FLIGHT.into(),
            ));
        }
        let mut total = 0u64;
        for s in segments.as_ref() {
            if s.device_offset.checked_add(s.len).is_none() {
                return Err(Error::new(ErrorKind::OffsetOutOfRange {
                    offset: s.device_offset,
                    len: s.len,
                }));
            }
            total = total
                .checked_add(s.len)
                .ok_or(Error::invalid("dma: total length overflows"))?;
        }
        if total == 0 {
            return Err(Error::zero_length("scatter/gather list"));
        }
        // References: execution + cancel (+ timer).
        let gate = CompletionGate::with_refs(2 + u32::from(config.timer))?;
        let slots = config.max_in_flight as usize;
        let holes = vec![u64::MAX; segments.as_ref().len()];
        let mut t = Transaction {
            segments,
            config,
            direction,
            cursor: (0, 0),
            total,
            bytes: 0,
            next_id: 0,
            slots: vec![IDLE; slots],
            actions: VecDeque::with_capacity(2 * slots + 2),
            gate,
            cancel_ref: true,
            timer_ref: config.timer,
            no_new: false,
            stopping: false,
            eof_at: u64::MAX,
            holes,
            error: None,
            saw_cancelled: false,
            finished: false,
            outcome: None,
        };
        for i in 0..slots {
            if !t.arm_next(i) {
                break;
            }
        }
        Ok(t)
    }

    /// Feed one event. Returns `true` if this event ended the DMA part of the transaction
    /// (see [`transfer_completed`](Self::transfer_completed)); then poll the actions.
    ///
    /// # Errors
    ///
    /// An impossible event: [`ErrorKind::NotInProgress`]
    /// for a completion for a transfer not in flight (unknown id, submit not yet polled,
    /// already completed) or a timeout or timer cancellation without an armed timer;
    /// [`ErrorKind::ExcessBytes`] for a completion with more
    /// bytes than its length. The transaction is then unchanged.
    pub fn handle(&mut self, event: DmaEvent) -> Result<bool> {
        match event {
            DmaEvent::TransferCompleted { id, status, bytes } => {
                self.transfer_completed(id, status, bytes)
            }
            DmaEvent::CompletedFinal { id, status, bytes } => {
                self.completed_final(id, status, bytes)
            }
            DmaEvent::Cancel => Ok(self.cancel()),
            DmaEvent::Timeout => self.timeout(),
            DmaEvent::TimerCancelled => self.timer_cancelled().map(|()| false),
        }
    }

    /// A transfer's completion came back. Returns `true`
    /// exactly once over the transaction's events: on the final transfer, the one after
    /// which no transfer is in flight and none will be started. From then on
    /// [`buffers_releasable`](Self::buffers_releasable) is true.
    ///
    /// `Ok(())` with fewer bytes than the transfer's length continues with the rest of
    /// it. `Ok(())` with 0 bytes on a read is end of file: no new transfer starts,
    /// those in flight drain (continuing only below the end), and the transaction ends
    /// with `Ok(())` and fewer bytes than [`total_len`](Self::total_len); on a write it is
    /// a failure (`EIO`), since retrying could loop. An error of kind
    /// [`Cancelled`](crate::ErrorKind::Cancelled) ends it with the status set by whoever
    /// cancelled (or `Cancelled`). Any other error ends the transaction with that error —
    /// the first device error overrides a cancel or timeout status, so a failure is never
    /// reported as a cancel.
    ///
    /// # Errors
    ///
    /// As [`handle`](Self::handle).
    pub fn transfer_completed(
        &mut self,
        id: TransferId,
        status: Result<()>,
        bytes: u64,
    ) -> Result<bool> {
        self.on_transfer(id, status, bytes, false)
    }

    /// A transfer's completion came back and the caller declares it the last one: no
    /// further transfer starts, others in flight are cancelled.
    /// Returns `true` if nothing else is in flight (the DMA part ended now); otherwise the
    /// last of the cancelled transfers returns `true`.
    ///
    /// # Errors
    ///
    /// As [`handle`](Self::handle).
    pub fn completed_final(
        &mut self,
        id: TransferId,
        status: Result<()>,
        bytes: u64,
    ) -> Result<bool> {
        self.on_transfer(id, status, bytes, true)
    }

    /// Cancel the transaction: status `Cancelled` unless
    /// a status was set first; transfers in flight are cancelled and drain, queued ones
    /// are withdrawn. Returns `true` if nothing was in flight, so the DMA part ended now.
    /// Ignored (returns `false`) once the final transfer came back or after an earlier
    /// cancel.
    pub fn cancel(&mut self) -> bool {
        if !self.cancel_ref {
            return false;
        }
        // The cancel routine runs: it begins completion (first setter wins) and drops its
        // reference; the execution reference keeps the request alive until the drain.
        self.gate.begin_completion(Status::Cancelled);
        self.stop_all();
        self.cancel_ref = false;
        self.drop_ref();
        self.finish_if_drained()
    }

    /// The deadline timer fired: status `TimedOut` unless a status was set first (a timer
    /// that fires after the final transfer loses the race and just drops its reference).
    /// Transfers in flight are cancelled. Returns `true` if this ended the DMA part.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotInProgress`] if no timer is armed
    /// or it already fired or was cancelled.
    pub fn timeout(&mut self) -> Result<bool> {
        if !self.timer_ref {
            return Err(NO_TIMER);
        }
        self.timer_ref = false;
        self.gate.begin_completion(Status::TimedOut);
        // The timer fired: a queued request to cancel it is moot (see `on_transfer`).
        self.actions
            .retain(|a| !matches!(a, DmaAction::CancelTimer));
        let ended = if self.finished {
            false
        } else {
            self.stop_all();
            self.finish_if_drained()
        };
        self.drop_ref();
        Ok(ended)
    }

    /// The timer's cancellation came back and it will never fire (the timer was stopped
    /// before it expired). Drops the timer's reference.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotInProgress`] if no timer is armed
    /// or it already fired or was cancelled.
    pub fn timer_cancelled(&mut self) -> Result<()> {
        if !self.timer_ref {
            return Err(NO_TIMER);
        }
        // Reported without the request being polled: withdraw it (see `on_transfer`).
        self.actions
            .retain(|a| !matches!(a, DmaAction::CancelTimer));
        self.timer_ref = false;
        self.drop_ref();
        Ok(())
    }

    /// The next action to carry out, or `None` until the next event.
    pub fn poll_action(&mut self) -> Option<DmaAction> {
        let action = self.actions.pop_front()?;
        if let DmaAction::Submit(t) = action {
            if let Some(s) = self
                .slots
                .iter_mut()
                .find(|s| s.state == SlotState::Queued && s.transfer.id == t.id)
            {
                s.state = SlotState::InFlight;
            }
        }
        Some(action)
    }

    /// Bytes actually moved so far, by every transfer, whatever the status (a cancel or
    /// timeout that wins does not erase bytes that moved).
    pub const fn bytes_transferred(&self) -> u64 {
        self.bytes
    }

    /// Bytes of segment `i`, from its start, that moved without a gap: the prefix of its
    /// memory the device filled (read) or took (write). A byte that moved after a gap is
    /// not counted (it is in [`bytes_transferred`](Self::bytes_transferred)): after a
    /// cancel, an error or a short transfer, a segment's count is always a prefix that
    /// really moved. Final once [`buffers_releasable`](Self::buffers_releasable); 0 for an
    /// index past the list.
    pub fn segment_moved(&self, i: usize) -> u64 {
        let segs = self.segments.as_ref();
        let Some(seg) = segs.get(i) else {
            return 0;
        };
        let mut end = seg.len.min(self.holes.get(i).copied().unwrap_or(0));
        // Not reached by the cursor: never given to a transfer.
        let (at, skip) = self.cursor;
        if i > at {
            return 0;
        }
        if i == at {
            end = end.min(skip);
        }
        // Given to a transfer whose completion has not come back.
        for s in self.slots.iter().filter(|s| s.state != SlotState::Idle) {
            if s.transfer.first_segment > i {
                continue;
            }
            let first = s
                .transfer
                .pieces(segs)
                .take_while(|p| p.segment <= i)
                .find(|p| p.segment == i);
            if let Some(p) = first {
                end = end.min(p.offset);
            }
        }
        end
    }

    /// Total bytes the list describes.
    pub const fn total_len(&self) -> u64 {
        self.total
    }

    /// True once the final transfer's completion came back (every transfer drained): the
    /// driver may hand the buffers back. Never true while the device may still access them.
    pub const fn buffers_releasable(&self) -> bool {
        self.finished
    }

    /// The request's outcome, once [`DmaAction::Complete`] was emitted.
    pub const fn outcome(&self) -> Option<DmaOutcome> {
        self.outcome
    }

    /// True once the request completed ([`DmaAction::Complete`] emitted).
    pub const fn is_complete(&self) -> bool {
        self.outcome.is_some()
    }

    /// The status set so far, if any (the final one once complete).
    pub fn status(&self) -> Option<Status> {
        self.gate.status()
    }

    /// Transfers submitted (or queued for submission) whose completion has not come back.
    pub fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state != SlotState::Idle)
            .count()
    }

    /// The scatter/gather list.
    pub fn segments(&self) -> &[Segment] {
        self.segments.as_ref()
    }

    /// The configuration.
    pub const fn config(&self) -> &DmaConfig {
        &self.config
    }

    /// Which way the bytes move.
    pub const fn direction(&self) -> Direction {
        self.direction
    }

    /// The action queue's capacity (tests check that it never grows).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn action_capacity(&self) -> usize {
        self.actions.capacity()
    }

    fn on_transfer(
        &mut self,
        id: TransferId,
        status: Result<()>,
        bytes: u64,
        last: bool,
    ) -> Result<bool> {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.state == SlotState::InFlight && s.transfer.id == id)
        else {
            return Err(NOT_IN_FLIGHT);
        };
        let t = self.slots[i].transfer;
        if bytes > t.len {
            return Err(TOO_MANY_BYTES);
        }
        self.slots[i].state = SlotState::Idle;
        self.bytes += bytes;
        // A cancel still queued for this transfer is moot now: withdraw it, so that every
        // `DmaAction::Cancel` the driver polls names a transfer that is really in flight.
        if self.slots[i].cancel_sent {
            self.actions
                .retain(|a| !matches!(a, DmaAction::Cancel(c) if *c == id));
        }
        if last {
            self.stop_all();
        }
        match status {
            Ok(()) if bytes == t.len => {
                self.arm_next(i);
            }
            Ok(()) if bytes == 0 => {
                self.note_holes(t, 0);
                match self.direction {
                    // End of file: start nothing new; transfers in flight drain (they may
                    // still carry data from before the end).
                    Direction::Read => {
                        self.no_new = true;
                        self.eof_at = self.eof_at.min(t.device_offset);
                    }
                    Direction::Write => self.device_error(Error::from_errno(libc::EIO)),
                }
            }
            Ok(()) => {
                // Short: continue from where it stopped, unless stopped or past the end.
                if !self.stopping && t.device_offset + bytes < self.eof_at {
                    self.resubmit_rest(i, t, bytes);
                } else {
                    self.note_holes(t, bytes);
                }
            }
            Err(e) if e.is_cancelled() => {
                self.note_holes(t, bytes);
                self.saw_cancelled = true;
                self.stop_all();
            }
            Err(e) => {
                self.note_holes(t, bytes);
                self.device_error(e);
            }
        }
        Ok(self.finish_if_drained())
    }

    /// Slot `i`'s transfer `t` moved `moved` bytes, fewer than its length: queue the rest.
    fn resubmit_rest(&mut self, i: usize, t: Transfer, moved: u64) {
        let segs = self.segments.as_ref();
        let ((first_segment, first_skip), used) =
            sg::advance(segs, (t.first_segment, t.first_skip), moved);
        let rest = Transfer {
            id: self.take_id(),
            device_offset: t.device_offset + moved,
            len: t.len - moved,
            first_segment,
            first_skip,
            segment_count: t.segment_count.saturating_sub(used),
        };
        self.queue(i, rest);
    }

    /// Transfer `t` moved its first `moved` bytes and the rest never will: in each segment
    /// the rest touches, the first byte it would have moved is a hole.
    fn note_holes(&mut self, t: Transfer, moved: u64) {
        let mut left = moved;
        for p in t.pieces(self.segments.as_ref()) {
            if left >= p.len {
                left -= p.len;
                continue;
            }
            if let Some(h) = self.holes.get_mut(p.segment) {
                *h = (*h).min(p.offset + left);
            }
            left = 0;
        }
    }

    /// Give slot `i` the next transfer from the cursor, if the transaction wants one.
    fn arm_next(&mut self, i: usize) -> bool {
        if self.no_new {
            return false;
        }
        let segs = self.segments.as_ref();
        let Some((start, device_offset, len, count, next)) = sg::next_transfer(
            segs,
            self.cursor,
            self.config.max_transfer,
            self.config.max_segments,
        ) else {
            return false;
        };
        self.cursor = next;
        let t = Transfer {
            id: self.take_id(),
            device_offset,
            len,
            first_segment: start.0,
            first_skip: start.1,
            segment_count: count,
        };
        self.queue(i, t);
        true
    }

    fn take_id(&mut self) -> TransferId {
        let id = TransferId::new(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn queue(&mut self, i: usize, transfer: Transfer) {
        self.slots[i] = Slot {
            state: SlotState::Queued,
            transfer,
            cancel_sent: false,
        };
        self.actions.push_back(DmaAction::Submit(transfer));
    }

    /// The device failed a transfer: the first error forces the status (it beats a cancel
    /// or timeout, so a failure is never reported as a cancel); everything else stops.
    fn device_error(&mut self, e: Error) {
        if self.error.is_none() && !self.finished {
            self.error = Some(e);
            self.gate.force_status(Status::from_error(e));
        }
        self.stop_all();
    }

    /// No new transfers; withdraw queued ones and cancel those in flight.
    fn stop_all(&mut self) {
        self.no_new = true;
        self.stopping = true;
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            match s.state {
                SlotState::Idle => {}
                SlotState::Queued => {
                    let id = s.transfer.id;
                    self.actions
                        .retain(|a| !matches!(a, DmaAction::Submit(t) if t.id == id));
                    self.slots[i].state = SlotState::Idle;
                    self.note_holes(s.transfer, 0);
                }
                SlotState::InFlight => {
                    if !s.cancel_sent {
                        self.slots[i].cancel_sent = true;
                        self.actions.push_back(DmaAction::Cancel(s.transfer.id));
                    }
                }
            }
        }
    }

    /// End the DMA part if the final transfer just came back: nothing in flight, and
    /// nothing left to start. Returns whether it ended now.
    fn finish_if_drained(&mut self) -> bool {
        if self.finished || self.slots.iter().any(|s| s.state != SlotState::Idle) {
            return false;
        }
        if self.arm_next(0) {
            // Unreachable by construction (a slot is re-armed whenever its transfer is
            // done), kept so that no event sequence can strand the transaction.
            return false;
        }
        self.finished = true;
        // Begin completion: a status set earlier (cancel, timeout, device error) wins.
        let status = if self.saw_cancelled {
            Status::Cancelled
        } else {
            Status::Success
        };
        self.gate.begin_completion(status);
        // Unmark cancelable: the cancel path can no longer run; drop its reference for it.
        if self.cancel_ref {
            self.cancel_ref = false;
            self.drop_ref();
        }
        // The timer is still queued: ask for it to be stopped; its reference drops when
        // the cancellation (or the timer itself) comes back.
        if self.timer_ref {
            self.actions.push_back(DmaAction::CancelTimer);
        }
        // Drop the execution reference.
        self.drop_ref();
        true
    }

    /// Drop one completion reference; if it was the last, emit the completion.
    fn drop_ref(&mut self) {
        if let Ok(Some(status)) = self.gate.release() {
            let c = DmaOutcome {
                // The first device error forced the status: report it as it came.
                status: self.error.map_or(status.into_result(), Err),
                bytes: self.bytes,
            };
            self.outcome = Some(c);
            self.actions.push_back(DmaAction::Complete(c));
        }
    }
}
