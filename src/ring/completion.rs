//! The one result of one operation ([`Completion`], with its [`Bufs`]) and the routes it
//! is delivered by ([`Delivery`]); [`OpFuture`] for the route that is a future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::buf::{IoBuf, PoolBuf, SharedBuf};
use crate::error::{Error, Result};
use crate::queue::CompletionQueue;

use super::op::OpId;
use super::signal::Signal;

/// The buffers an operation gives back.
#[derive(Default)]
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

/// Compact: a list shows its length and total bytes, not every buffer.
impl fmt::Debug for Bufs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bufs::None => f.write_str("None"),
            Bufs::Pool(b) => f.debug_tuple("Pool").field(b).finish(),
            Bufs::Shared(b) => f.debug_tuple("Shared").field(b).finish(),
            Bufs::PoolList(v) => f
                .debug_struct("PoolList")
                .field("bufs", &v.len())
                .field("bytes", &v.iter().map(|b| b.len()).sum::<usize>())
                .finish(),
            Bufs::List(v) => f
                .debug_struct("List")
                .field("bufs", &v.len())
                .field("bytes", &v.iter().map(|b| b.data().len()).sum::<usize>())
                .finish(),
        }
    }
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
#[derive(Debug)]
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

    /// The tag given with [`Op::tag`](super::Op::tag).
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

/// A completion routine: runs once, on the thread that drives the ring.
pub(crate) type Routine = Box<dyn FnOnce(Completion) + Send + 'static>;

/// Where a completion goes.
pub(crate) enum Delivery {
    /// Kept in the op table until [`Ring::wait`](super::Ring::wait) collects it.
    Keep,
    Routine(Routine),
    Queue(Arc<CompletionQueue<Completion>>),
    /// Appended to the ring's own completion FIFO ([`Ring::pop_completion`](super::Ring::pop_completion)).
    Local,
    Future(Arc<FutureSlot>),
    Detach,
    /// A routine that also gets the ring that produced the completion (`Some`, as `dyn
    /// Any`: always a `Ring`), or `None` when the operation completed without reaching a
    /// ring. Cross-ring hand-off uses it to send the completion home (see `ring::mesh`).
    WithRing(RingRoutine),
}

/// See [`Delivery::WithRing`].
pub(crate) type RingRoutine =
    Box<dyn FnOnce(Completion, Option<&mut dyn std::any::Any>) + Send + 'static>;

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Delivery::Keep => "Keep",
            Delivery::Routine(_) => "Routine",
            Delivery::Queue(_) => "Queue",
            Delivery::Local => "Local",
            Delivery::Future(_) => "Future",
            Delivery::Detach => "Detach",
            Delivery::WithRing(_) => "WithRing",
        })
    }
}

/// Shared between an [`OpFuture`] and the ring.
#[derive(Debug, Default)]
pub(crate) struct FutureSlot {
    state: Mutex<FutureState>,
}

#[derive(Debug, Default)]
struct FutureState {
    /// The completion, until the future takes it.
    done: Option<Completion>,
    /// Set when the completion arrived (it may have been taken since).
    finished: bool,
    /// The operation's id, once the ring has started it.
    id: Option<OpId>,
    /// The future was dropped or asked to cancel.
    cancel: bool,
    waker: Option<Waker>,
}

impl FutureSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, FutureState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn complete(&self, c: Completion) {
        let waker = {
            let mut st = self.lock();
            st.done = Some(c);
            st.finished = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the future asked for a cancel before the ring started the operation (the
    /// ring then completes it without starting it).
    pub(crate) fn cancel_requested(&self) -> bool {
        self.lock().cancel
    }

    /// The ring started the operation as `id`. Returns whether the future asked to cancel
    /// meanwhile and the operation is still running: the ring must cancel it.
    pub(crate) fn bind(&self, id: OpId) -> bool {
        let mut st = self.lock();
        st.id = Some(id);
        st.cancel && !st.finished
    }

    /// Ask for a cancel: returns the id to cancel if the ring has started the operation
    /// and it has not completed. Without an id yet, the ring sees the request when it
    /// starts the operation (`cancel_requested`, `bind`).
    fn request_cancel(&self) -> Option<OpId> {
        let mut st = self.lock();
        if st.finished || st.cancel {
            return None;
        }
        st.cancel = true;
        st.id
    }
}

/// A future resolving to an operation's [`Completion`].
///
/// It is woken by whatever drives the ring: a thread ([`Ring::spawn`](super::Ring::spawn)
/// or your own loop), a task of an async runtime (`iocomplete::tokio::spawn` with the
/// `tokio` feature, or [`Ring::poll_complete`](super::Ring::poll_complete) in any
/// reactor). Nothing drives the ring for you: a future of a ring nobody drives never
/// resolves.
///
/// # Dropping cancels
///
/// Dropping the future before it resolved cancels the operation (as
/// [`cancel`](Self::cancel) does) — e.g. when `tokio::time::timeout` gives up on it. The
/// operation still completes exactly once, inside the ring: its buffers stay parked there
/// until the kernel's completion arrives (the kernel may be writing into them until
/// then), and then return to their pool. A dropped [`Ticket`](super::Ticket), by contrast,
/// does not cancel: its operation runs to its end unobserved.
pub struct OpFuture {
    slot: Arc<FutureSlot>,
    /// Where cancel requests go (the ring's command queue).
    ring: Arc<Signal>,
}

impl fmt::Debug for OpFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.slot.lock();
        f.debug_struct("OpFuture")
            .field("id", &st.id)
            .field("finished", &st.finished)
            .field("cancel", &st.cancel)
            .finish()
    }
}

impl OpFuture {
    pub(crate) fn new(slot: Arc<FutureSlot>, ring: Arc<Signal>) -> OpFuture {
        OpFuture { slot, ring }
    }

    /// The operation's id, once the ring has started it (`None` before: an operation sent
    /// through a [`RingHandle`](crate::RingHandle) starts when the ring is next driven).
    pub fn id(&self) -> Option<OpId> {
        self.slot.lock().id
    }

    /// Ask the ring to cancel the operation. The future still resolves — to
    /// [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled), or to the operation's own
    /// result if it won the race. Calling it again, or after the completion, does nothing.
    pub fn cancel(&self) {
        if let Some(id) = self.slot.request_cancel() {
            self.ring.cancel(id);
        }
    }
}

impl Future for OpFuture {
    type Output = Completion;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion> {
        let mut st = self.slot.lock();
        match st.done.take() {
            Some(c) => Poll::Ready(c),
            None => {
                match &mut st.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for OpFuture {
    /// Cancels the operation unless it has completed (one lock: the completion path's
    /// cost). A completion not taken, and the waker, are dropped outside the lock.
    fn drop(&mut self) {
        let (done, waker, cancel) = {
            let mut st = self.slot.lock();
            let cancel = if st.finished || st.cancel {
                None
            } else {
                st.cancel = true;
                st.id
            };
            (st.done.take(), st.waker.take(), cancel)
        };
        if let Some(id) = cancel {
            self.ring.cancel(id);
        }
        drop((done, waker));
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;
    use crate::buf::BufferPool;

    #[test]
    fn bufs_debug_is_compact() {
        let pool = BufferPool::builder()
            .slots(32)
            .slot_len(4096)
            .build()
            .unwrap();
        let mut v = Vec::new();
        for _ in 0..32 {
            let mut b = pool.try_get().unwrap();
            b.set_len(100).unwrap();
            v.push(b);
        }
        let bufs = Bufs::PoolList(v);
        assert_eq!(format!("{bufs:?}"), "PoolList { bufs: 32, bytes: 3200 }");
        let Bufs::PoolList(v) = bufs else {
            unreachable!()
        };
        let list = Bufs::List(v.into_iter().map(IoBuf::Pool).collect());
        assert_eq!(format!("{list:?}"), "List { bufs: 32, bytes: 3200 }");
        assert_eq!(format!("{:?}", Bufs::None), "None");
    }
}
