//! Completions and the ways to consume them.
//!
//! Every operation submitted to a [`Ring`] completes **exactly once**, with a
//! [`Completion`]: its status, its byte count, and its buffers back. The caller picks, per
//! operation, how that completion reaches it (see [`Submission`]):
//!
//! | method | the completion goes to |
//! |---|---|
//! | [`Submission::wait`] | the caller, after driving the ring until it arrives |
//! | [`Submission::ticket`] + [`Ring::wait`] | the caller, later (several in flight) |
//! | [`Submission::then`] | a completion routine (closure) run on the ring's thread |
//! | [`Submission::to_queue`] | a [`CompletionQueue`] that any thread consumes |
//! | [`Submission::to_ring`] + [`Ring::pop_completion`] | the ring's own FIFO, read by the thread driving it (no atomics: the cheapest route) |
//! | [`Submission::future`] | an [`OpFuture`] that any executor can `.await` |
//! | [`Submission::detach`] | nobody: send and forget; buffers are still reclaimed |
//!
//! An invalid request (misaligned direct I/O, zero length, a buffer too small, a closed
//! target, a wrong-kind target) completes the same way, with a typed error, without a
//! syscall. A dropped [`Ticket`] or [`OpFuture`] does not free anything early: the ring
//! parks the operation's buffers until the kernel's completion arrives.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::buf::{IoBuf, PoolBuf, SharedBuf};
use crate::error::{Error, Result};
use crate::queue::CompletionQueue;
use crate::ring::{Op, OpId, Ring};

/// The buffers an operation gives back.
#[derive(Debug, Default)]
pub enum Bufs {
    /// The operation had no buffer.
    #[default]
    None,
    /// One unique pooled buffer (reads, writes of a `PoolBuf`).
    Pool(PoolBuf),
    /// One shared buffer (writes of a `SharedBuf`).
    Shared(SharedBuf),
    /// Several unique buffers (vectored reads), in order.
    PoolList(Vec<PoolBuf>),
    /// Several buffers (vectored writes), in order.
    List(Vec<IoBuf>),
}

impl Bufs {
    pub(crate) fn from_io(b: IoBuf) -> Bufs {
        match b {
            IoBuf::Pool(p) => Bufs::Pool(p),
            IoBuf::Shared(s) => Bufs::Shared(s),
        }
    }
}

/// The one result of one operation.
///
/// ```
/// # use iocomplete::{Op, Ring};
/// let mut ring = Ring::builder().build()?;
/// let done = ring.submit(Op::nop().tag(9)).wait()?;
/// assert_eq!(done.tag(), 9);
/// assert_eq!(done.result(), Ok(0));
/// # Ok::<(), iocomplete::Error>(())
/// ```
pub struct Completion {
    pub(crate) id: OpId,
    pub(crate) tag: u64,
    pub(crate) result: Result<usize>,
    pub(crate) bufs: Bufs,
    pub(crate) more: bool,
}

impl Completion {
    /// Bytes transferred (for a poll: the ready event mask), or the error.
    pub fn result(&self) -> Result<usize> {
        self.result
    }

    /// Bytes transferred; 0 on error.
    pub fn bytes(&self) -> usize {
        self.result.unwrap_or(0)
    }

    /// The error, if the operation failed.
    pub fn error(&self) -> Option<Error> {
        self.result.err()
    }

    /// True on success.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }

    /// The tag given with [`Op::tag`].
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// For multishot operations: true while the operation stays armed and more
    /// completions will follow; false on the last one (always false for other ops).
    pub fn has_more(&self) -> bool {
        self.more
    }

    /// The operation's id.
    pub fn id(&self) -> OpId {
        self.id
    }

    /// The buffers, by reference.
    pub fn bufs(&self) -> &Bufs {
        &self.bufs
    }

    /// Take the buffers out.
    pub fn take_bufs(&mut self) -> Bufs {
        std::mem::take(&mut self.bufs)
    }

    /// The unique buffer of a read (or of a write of a `PoolBuf`), if there is one.
    pub fn into_buf(self) -> Option<PoolBuf> {
        match self.bufs {
            Bufs::Pool(b) => Some(b),
            _ => None,
        }
    }

    /// The buffer of a read together with the result: `Ok(buf)` with `buf.len()` bytes,
    /// or the error (the buffer, if any, is dropped back to its pool).
    pub fn into_result(self) -> Result<PoolBuf> {
        let r = self.result;
        match (r, self.bufs) {
            (Err(e), _) => Err(e),
            (Ok(_), Bufs::Pool(b)) => Ok(b),
            (Ok(_), _) => Err(Error::invalid("completion carries no unique buffer")),
        }
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("id", &self.id)
            .field("tag", &self.tag)
            .field("result", &self.result)
            .field("bufs", &self.bufs)
            .field("more", &self.more)
            .finish()
    }
}

/// A completion routine: runs once, on the thread that drives the ring.
pub(crate) type Routine = Box<dyn FnOnce(Completion) + Send + 'static>;

/// Where a completion goes.
pub(crate) enum Delivery {
    /// Kept in the op table until [`Ring::wait`] collects it.
    Keep,
    Routine(Routine),
    Queue(Arc<CompletionQueue<Completion>>),
    /// Appended to the ring's own completion FIFO ([`Ring::pop_completion`]).
    Local,
    Future(Arc<FutureSlot>),
    Detach,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Delivery::Keep => "Keep",
            Delivery::Routine(_) => "Routine",
            Delivery::Queue(_) => "Queue",
            Delivery::Local => "Local",
            Delivery::Future(_) => "Future",
            Delivery::Detach => "Detach",
        })
    }
}

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
    /// (e.g. a [`RingHandle`](crate::RingHandle) driver thread, or the current thread).
    pub fn future(mut self) -> OpFuture {
        let op = self.take();
        let slot = Arc::new(FutureSlot::default());
        self.ring.start(op, Delivery::Future(slot.clone()));
        OpFuture { slot }
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

/// Shared between an [`OpFuture`] and the ring.
#[derive(Debug, Default)]
pub(crate) struct FutureSlot {
    state: Mutex<FutureState>,
}

#[derive(Debug, Default)]
struct FutureState {
    done: Option<Completion>,
    waker: Option<Waker>,
}

impl FutureSlot {
    pub(crate) fn complete(&self, c: Completion) {
        let waker = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.done = Some(c);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A future resolving to an operation's [`Completion`]; works on any executor. It is
/// woken by whichever thread drives the ring. Dropping it early is safe: the ring keeps
/// the buffers until the kernel completes the operation.
#[derive(Debug)]
pub struct OpFuture {
    slot: Arc<FutureSlot>,
}

impl OpFuture {
    pub(crate) fn new(slot: Arc<FutureSlot>) -> OpFuture {
        OpFuture { slot }
    }
}

impl Future for OpFuture {
    type Output = Completion;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion> {
        let mut st = self.slot.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.done.take() {
            Some(c) => Poll::Ready(c),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
