//! Handing an operation to the ring: a [`Submission`] chooses the route its completion
//! takes; a [`Ticket`] claims a completion the ring keeps.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::queue::CompletionQueue;

use super::completion::{Completion, Delivery, FutureSlot, OpFuture};
use super::op::{Op, OpId};
use super::{EntryState, Ring};

/// An operation that has been described but not yet handed to the ring: choose how its
/// completion should reach you. Dropping it unchosen detaches the operation (it still
/// runs and its buffers are still reclaimed).
#[must_use = "choose how the completion is consumed: wait, ticket, then, to_queue, future or detach"]
pub struct Submission<'r> {
    pub(crate) ring: &'r mut Ring,
    pub(crate) op: Option<Op>,
}

impl fmt::Debug for Submission<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submission").field("op", &self.op).finish()
    }
}

impl Submission<'_> {
    fn take(&mut self) -> Op {
        // `op` is `Some` until one of the consuming methods (or drop) takes it.
        self.op.take().unwrap_or_else(Op::nop)
    }

    /// Submit and drive the ring until this operation completes. `Err` only if the ring
    /// itself failed (the operation's own failure is in the `Completion`).
    pub fn wait(mut self) -> Result<Completion> {
        let op = self.take();
        let id = self.ring.start(op, Delivery::Keep);
        self.ring.wait_id(id)
    }

    /// Submit; collect the completion later with [`Ring::wait`].
    pub fn ticket(mut self) -> Ticket {
        let op = self.take();
        let id = self.ring.start(op, Delivery::Keep);
        self.ring.ticket(id)
    }

    /// Submit with a completion routine, run once on the thread driving the ring.
    pub fn then(mut self, f: impl FnOnce(Completion) + Send + 'static) -> OpId {
        let op = self.take();
        self.ring.start(op, Delivery::Routine(Box::new(f)))
    }

    /// Submit; the completion is pushed to `queue`. If the queue is full it waits in the
    /// queue's overflow list, popped after the items before it: the ring never blocks on
    /// a full queue and never drops a completion, even when it is dropped itself.
    pub fn to_queue(mut self, queue: &Arc<CompletionQueue<Completion>>) -> OpId {
        let op = self.take();
        self.ring.start(op, Delivery::Queue(queue.clone()))
    }

    /// Submit; the completion is appended to the ring's own FIFO, taken in completion
    /// order with [`Ring::pop_completion`] by the thread that drives the ring. This is
    /// the hot-path route for a single-threaded event loop: no reference count, no atomic
    /// queue, no allocation once the FIFO has grown to the loop's depth.
    pub fn to_ring(mut self) -> OpId {
        let op = self.take();
        self.ring.start(op, Delivery::Local)
    }

    /// Submit; returns a future resolving to the completion. Someone must drive the ring
    /// for it to resolve (see [`OpFuture`]); dropping it cancels the operation.
    pub fn future(mut self) -> OpFuture {
        let op = self.take();
        let slot = Arc::new(FutureSlot::default());
        // A fresh slot: no cancel can have been asked for yet.
        let id = self.ring.start(op, Delivery::Future(slot.clone()));
        slot.bind(id);
        OpFuture::new(slot, self.ring.shared.signal.clone())
    }

    /// Submit and forget (send-and-forget). The ring still reclaims every buffer when the
    /// kernel's completion arrives.
    pub fn detach(mut self) -> OpId {
        let op = self.take();
        self.ring.start(op, Delivery::Detach)
    }
}

impl Drop for Submission<'_> {
    fn drop(&mut self) {
        if let Some(op) = self.op.take() {
            self.ring.start(op, Delivery::Detach);
        }
    }
}

/// A claim on a completion kept by the ring, collected with [`Ring::wait`]. Dropping a
/// ticket abandons the completion; the ring still parks the buffers until the kernel is
/// done with them, then returns them to the pool.
#[must_use = "collect the completion with Ring::wait, or drop the ticket to abandon it"]
#[derive(Debug)]
pub struct Ticket {
    pub(crate) id: OpId,
    pub(crate) abandoned: Option<Arc<crossbeam_queue::SegQueue<OpId>>>,
}

impl Ticket {
    /// The operation's id (for [`Ring::cancel`]).
    pub fn id(&self) -> OpId {
        self.id
    }

    pub(crate) fn disarm(mut self) -> OpId {
        self.abandoned = None;
        self.id
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(q) = self.abandoned.take() {
            q.push(self.id);
        }
    }
}

impl Ring {
    /// Describe how the completion of `op` should reach you; see [`Submission`].
    pub fn submit(&mut self, op: Op) -> Submission<'_> {
        Submission {
            ring: self,
            op: Some(op),
        }
    }

    /// Start an operation whose completion goes to a future, honouring a cancel the
    /// future asked for before the ring got to it (a handle's submission waits in the
    /// inbox until then): such an operation completes with `Cancelled` without starting.
    pub(crate) fn start_future(&mut self, op: Op, slot: Arc<FutureSlot>) -> OpId {
        if slot.cancel_requested() {
            super::handle::complete_unsent(op, Delivery::Future(slot));
            return OpId::NONE;
        }
        let id = self.start(op, Delivery::Future(slot.clone()));
        if slot.bind(id) {
            self.cancel(id);
        }
        id
    }

    /// A ticket for a kept entry.
    pub(crate) fn ticket(&self, id: OpId) -> Ticket {
        Ticket {
            id,
            abandoned: Some(self.abandoned.clone()),
        }
    }

    /// Collect the completion of a ticketed operation, driving the ring until it arrives.
    pub fn wait(&mut self, ticket: Ticket) -> Result<Completion> {
        let same_ring = ticket
            .abandoned
            .as_ref()
            .is_some_and(|q| Arc::ptr_eq(q, &self.abandoned));
        if !same_ring {
            // Dropping the foreign ticket hands it back to its own ring.
            return Err(Error::new(ErrorKind::WrongRing { what: "ticket" }));
        }
        let id = ticket.disarm();
        self.wait_id(id)
    }

    /// Whether the ticketed operation has completed (without driving the ring).
    pub fn is_done(&self, ticket: &Ticket) -> bool {
        matches!(self.entry(ticket.id), Some(e) if matches!(e.state, EntryState::Kept(_)))
    }
}
