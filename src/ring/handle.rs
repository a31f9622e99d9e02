//! `RingHandle`: submitting to a ring from other threads.

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_queue::SegQueue;

use crate::error::{Error, Result};
use crate::queue::CompletionQueue;

use super::completion::{Bufs, Completion, Delivery, FutureSlot, OpFuture};
use super::op::{Op, OpId, OpKind};

/// State shared by a ring and its handles: an inbox of operations and an eventfd that
/// wakes the ring (it keeps a multishot poll armed on it).
pub(crate) struct HandleShared {
    inbox: SegQueue<(Op, Delivery)>,
    /// Operations to cancel, from owners dropped without access to the ring.
    cancels: SegQueue<OpId>,
    wake: OwnedFd,
    /// Set by `RingHandle::shutdown`: the driver loop may exit once idle.
    shut_down: AtomicBool,
    /// Set when the ring is dropped: nobody will pick up the inbox any more.
    closed: AtomicBool,
}

impl HandleShared {
    pub(crate) fn new() -> Result<HandleShared> {
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::last_os());
        }
        Ok(HandleShared {
            inbox: SegQueue::new(),
            cancels: SegQueue::new(),
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
            shut_down: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
    }

    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    pub(crate) fn pop(&self) -> Option<(Op, Delivery)> {
        self.inbox.pop()
    }

    pub(crate) fn pop_cancel(&self) -> Option<OpId> {
        self.cancels.pop()
    }

    pub(crate) fn inbox_is_empty(&self) -> bool {
        self.inbox.is_empty()
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd. A full counter (EAGAIN)
        // means a wake-up is already pending, which is all we need.
        let _ = unsafe { libc::write(self.wake_fd(), (&one as *const u64).cast(), 8) };
    }

    pub(crate) fn clear_wake(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; EAGAIN (nothing pending) is fine.
        let _ = unsafe { libc::read(self.wake_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        // Acquire: pairs with the Release in `shutdown`, so the operations pushed before
        // the shutdown are visible to the ring's final inbox check.
        self.shut_down.load(Ordering::Acquire)
    }

    pub(crate) fn is_closed(&self) -> bool {
        // SeqCst: see `close`.
        self.closed.load(Ordering::SeqCst)
    }

    /// The ring is going away. SeqCst on this store and on the handles' check after their
    /// push (a Dekker handshake): either the ring's final drain sees a pushed item, or the
    /// pusher sees `closed` and drains it itself. Every item completes exactly once.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Complete everything left in the inbox with `Cancelled` (on the calling thread).
    pub(crate) fn drain_cancelled(&self) {
        while let Some((op, d)) = self.inbox.pop() {
            complete_unsent(op, d);
        }
    }
}

/// Complete an operation that never reached a ring, with `Cancelled`.
fn complete_unsent(op: Op, d: Delivery) {
    let bufs = match op.kind {
        OpKind::Read { buf, .. } => Bufs::Pool(buf),
        OpKind::Write { buf, .. } => Bufs::from_io(buf),
        OpKind::Readv { bufs, .. } => Bufs::PoolList(bufs),
        OpKind::Writev { bufs, .. } => Bufs::List(bufs),
        OpKind::Nop
        | OpKind::Fsync { .. }
        | OpKind::Poll { .. }
        | OpKind::ReadMulti { .. }
        | OpKind::Timeout { .. } => Bufs::None,
    };
    let c = Completion {
        id: OpId::NONE,
        tag: op.tag,
        result: Err(Error::new(crate::ErrorKind::Cancelled)),
        bufs,
        more: false,
    };
    match d {
        Delivery::Routine(f) => f(c),
        // Never waits: a full queue takes it in its overflow list.
        Delivery::Queue(q) => q.push_overflow(c),
        Delivery::Future(s) => s.complete(c),
        Delivery::Keep | Delivery::Local | Delivery::Detach => drop(c),
    }
}

/// Submits operations to a [`Ring`](super::Ring) from any thread (`Send + Sync`, cheap
/// to clone). The ring picks the operations up when driven; a submission wakes a ring
/// blocked waiting for completions. Targets must have been registered on the ring.
///
/// ```
/// use iocomplete::{CompletionQueue, Op, Ring};
/// use std::sync::Arc;
/// let ring = Ring::new()?;
/// let (handle, driver) = ring.spawn()?;
/// let q = Arc::new(CompletionQueue::new(16));
/// handle.submit_to(Op::nop().tag(1), &q);
/// let c = q.pop_timeout(std::time::Duration::from_secs(5)).unwrap();
/// assert_eq!(c.tag(), 1);
/// handle.shutdown();
/// driver.join().unwrap()?;
/// # Ok::<(), iocomplete::Error>(())
/// ```
#[derive(Clone)]
pub struct RingHandle {
    shared: Arc<HandleShared>,
}

impl fmt::Debug for RingHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingHandle")
            .field("closed", &self.shared.is_closed())
            .finish()
    }
}

impl RingHandle {
    pub(crate) fn new(shared: Arc<HandleShared>) -> RingHandle {
        RingHandle { shared }
    }

    fn send(&self, op: Op, d: Delivery) {
        if self.shared.is_closed() {
            complete_unsent(op, d);
            return;
        }
        self.shared.inbox.push((op, d));
        // SeqCst: the other half of the handshake in `HandleShared::close`.
        if self.shared.closed.load(Ordering::SeqCst) {
            self.shared.drain_cancelled();
            return;
        }
        self.shared.wake();
    }

    /// Submit; the completion is pushed to `queue`.
    pub fn submit_to(&self, op: Op, queue: &Arc<CompletionQueue<Completion>>) {
        self.send(op, Delivery::Queue(queue.clone()));
    }

    /// Submit with a completion routine (runs on the ring's thread).
    pub fn submit_then(&self, op: Op, f: impl FnOnce(Completion) + Send + 'static) {
        self.send(op, Delivery::Routine(Box::new(f)));
    }

    /// Submit; returns a future resolving to the completion.
    pub fn submit_future(&self, op: Op) -> OpFuture {
        let slot = Arc::new(FutureSlot::default());
        self.send(op, Delivery::Future(slot.clone()));
        OpFuture::new(slot)
    }

    /// Submit and forget; buffers are still reclaimed.
    pub fn detach(&self, op: Op) {
        self.send(op, Delivery::Detach);
    }

    /// Ask the driver loop ([`Ring::drive_until_shutdown`](super::Ring::drive_until_shutdown),
    /// [`Ring::spawn`](super::Ring::spawn)) to return once everything submitted so far
    /// has completed.
    pub fn shutdown(&self) {
        // Release: see `HandleShared::is_shut_down`.
        self.shared.shut_down.store(true, Ordering::Release);
        self.shared.wake();
    }

    /// Wake the ring if its driving thread is waiting in the kernel (in
    /// [`Ring::run_once`](super::Ring::run_once) with a timeout, or
    /// [`Ring::drive_until_shutdown`](super::Ring::drive_until_shutdown)), e.g. after
    /// handing that thread work through another channel. Cheap when repeated: one pending
    /// wake-up covers any number of calls.
    pub fn wake(&self) {
        self.shared.wake();
    }

    /// Ask the ring to cancel operation `id` (as [`Ring::cancel`](super::Ring::cancel))
    /// when it is next driven, and wake it. For owners dropped without access to the ring
    /// (a reader, a FIFO receiver). Nothing happens if the operation has completed
    /// meanwhile (the id's generation no longer matches), or if the ring is gone (it
    /// cancelled everything as it closed).
    pub(crate) fn cancel(&self, id: OpId) {
        if self.shared.is_closed() {
            return;
        }
        self.shared.cancels.push(id);
        self.shared.wake();
    }

    /// Whether the ring is gone (submissions then complete at once with `Cancelled`).
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}
