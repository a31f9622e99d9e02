//! `RingHandle`: using a ring from other threads — submitting, registering and closing
//! targets, cancelling, shutting down.

use std::any::Any;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_queue::SegQueue;

use crate::error::{Error, ErrorKind, Result};
use crate::queue::CompletionQueue;

use super::completion::{Bufs, Completion, Delivery, FutureSlot, OpFuture};
use super::op::{Op, OpId, OpKind};
use super::signal::Signal;
use super::target::{FdInfo, Target};

/// A message posted to a ring (`RingHandle::post`, `Ring::post`): run once, on the ring's
/// thread with the ring (`Some`), or with `None` wherever the ring was found gone. The
/// ring is passed as `dyn Any` (always a `Ring`; `ring::mesh` makes messages and
/// downcasts) so that this file, which the ring's own file names, need not name `Ring`.
pub(crate) type Message = Box<dyn FnOnce(Option<&mut dyn Any>) + Send + 'static>;

/// What a handle asks the ring to do, in the order it asked.
pub(crate) enum Cmd {
    /// Start an operation.
    Op(Op, Delivery),
    /// Close a target (after the operations sent before it have started).
    Close(Target),
    /// Run a message on the ring's thread.
    Post(Message),
}

impl Cmd {
    /// The ring will never carry this out: an operation completes with `Cancelled`, a
    /// message learns the ring is gone.
    pub(crate) fn refuse(self) {
        match self {
            Cmd::Op(op, d) => complete_unsent(op, d),
            Cmd::Post(m) => m(None),
            Cmd::Close(_) => {}
        }
    }
}

/// A target registered through a handle, waiting for the ring to install it.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) target: Target,
    pub(crate) fd: OwnedFd,
    pub(crate) info: FdInfo,
}

/// Target indices and generations, handed out by the ring and by its handles alike, so
/// a handle can return a [`Target`] at once; plus the registrations the ring has not
/// installed yet.
#[derive(Debug, Default)]
pub(crate) struct TargetIds {
    free: Vec<u32>,
    next: u32,
    gen: u32,
    pub(crate) pending: Vec<Registration>,
}

impl TargetIds {
    /// A fresh (index, generation) pair; `None` when every `u32` index is taken.
    pub(crate) fn alloc(&mut self) -> Option<(u32, u32)> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = self.next;
                self.next = self.next.checked_add(1)?;
                i
            }
        };
        self.gen = super::op::next_gen(self.gen);
        Some((index, self.gen))
    }

    /// Give back an index whose target the ring has closed.
    pub(crate) fn release(&mut self, index: u32) {
        self.free.push(index);
    }
}

/// State shared by a ring and its handles: an inbox of commands and an eventfd that
/// wakes the ring (it keeps a multishot poll armed on it).
pub(crate) struct HandleShared {
    ring: u32,
    inbox: SegQueue<Cmd>,
    /// Wake-ups, cancels and the "closed" flag (shared with the ring's futures too).
    pub(crate) signal: Arc<Signal>,
    /// Set by `RingHandle::shutdown`: the driver loop may exit once idle.
    shut_down: AtomicBool,
    /// Set by `RingHandle::shutdown_now`: cancel what is in flight and everything sent
    /// from now on.
    cancel_all: AtomicBool,
    /// Target ids (see [`TargetIds`]); locked only to register and close.
    pub(crate) targets: Mutex<TargetIds>,
    /// `targets.pending.len()`, readable without the lock (see `has_registrations`).
    registrations: AtomicUsize,
    /// A duplicate of the io_uring instance's descriptor, for other rings to ring this
    /// one's doorbell with `IORING_OP_MSG_RING` (see `ring::mesh`); `None` for the
    /// thread-pool backend, on kernels without `MSG_RING`, and once the ring is dropped.
    /// A sender clones the `Arc` for as long as its `MSG_RING` is in flight, so the
    /// number it names is never closed (and reused) under it.
    doorbell: Mutex<Option<Arc<OwnedFd>>>,
}

impl HandleShared {
    pub(crate) fn new(ring: u32) -> Result<HandleShared> {
        Ok(HandleShared {
            ring,
            inbox: SegQueue::new(),
            signal: Arc::new(Signal::new()?),
            shut_down: AtomicBool::new(false),
            cancel_all: AtomicBool::new(false),
            targets: Mutex::new(TargetIds::default()),
            registrations: AtomicUsize::new(0),
            doorbell: Mutex::new(None),
        })
    }

    /// Push a command unless the ring is gone or cancelling everything, in which case it
    /// is refused ([`Cmd::refuse`]) on this thread. Returns whether it was queued; the
    /// caller then wakes the ring.
    ///
    /// SeqCst (in `is_closed`, after the push): the other half of the handshake in
    /// `Signal::close` — if the ring closed meanwhile, its final drain may have missed the
    /// command: drain it here. Each command is carried out or refused exactly once.
    pub(crate) fn push(&self, cmd: Cmd) -> bool {
        if self.signal.is_closed() || self.is_cancelling_all() {
            cmd.refuse();
            return false;
        }
        self.inbox.push(cmd);
        if self.signal.is_closed() {
            self.drain_cancelled();
            return false;
        }
        true
    }

    /// Commands waiting in the inbox (a snapshot: others may push meanwhile).
    pub(crate) fn inbox_len(&self) -> usize {
        self.inbox.len()
    }

    /// The descriptor to ring this ring's doorbell with, if it has one (see `doorbell`).
    pub(crate) fn doorbell(&self) -> Option<Arc<OwnedFd>> {
        self.doorbell
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Set (at build) or clear (at drop) the doorbell descriptor.
    pub(crate) fn set_doorbell(&self, fd: Option<OwnedFd>) {
        *self.doorbell.lock().unwrap_or_else(|e| e.into_inner()) = fd.map(Arc::new);
    }

    pub(crate) fn pop(&self) -> Option<Cmd> {
        self.inbox.pop()
    }

    pub(crate) fn inbox_is_empty(&self) -> bool {
        self.inbox.is_empty()
    }

    pub(crate) fn ids(&self) -> std::sync::MutexGuard<'_, TargetIds> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh target of this ring (index and generation from [`TargetIds`]); installed
    /// by the caller.
    pub(crate) fn new_target(ids: &mut TargetIds, ring: u32) -> Result<Target> {
        let (index, gen) = ids
            .alloc()
            .ok_or_else(|| Error::invalid("every target index of this ring is taken"))?;
        Ok(Target { ring, index, gen })
    }

    /// Whether a handle registered a target the ring has not installed yet. Relaxed: a
    /// registration that happened-before this call (the caller learned its `Target`
    /// somehow) is seen by coherence; the lock taken to install it synchronizes the rest.
    pub(crate) fn has_registrations(&self) -> bool {
        self.registrations.load(Ordering::Relaxed) > 0
    }

    /// The registrations waiting for the ring, taken out of the shared state.
    pub(crate) fn take_registrations(&self) -> Vec<Registration> {
        let mut ids = self.ids();
        // Relaxed: under the lock, which orders it with the pushes.
        self.registrations.store(0, Ordering::Relaxed);
        std::mem::take(&mut ids.pending)
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        // Acquire: pairs with the Release in `shutdown`, so the operations pushed before
        // the shutdown are visible to the ring's final inbox check.
        self.shut_down.load(Ordering::Acquire)
    }

    /// Whether `shutdown_now` was called. Acquire: pairs with its Release store.
    pub(crate) fn is_cancelling_all(&self) -> bool {
        self.cancel_all.load(Ordering::Acquire)
    }

    /// Refuse everything left in the inbox (on the calling thread: operations complete
    /// with `Cancelled`, messages learn the ring is gone), and close the descriptors of
    /// registrations nobody will install.
    pub(crate) fn drain_cancelled(&self) {
        while let Some(cmd) = self.inbox.pop() {
            cmd.refuse();
        }
        drop(self.take_registrations());
    }
}

/// Complete an operation that never reached a ring, with `Cancelled`.
pub(crate) fn complete_unsent(op: Op, d: Delivery) {
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
        Delivery::WithRing(f) => f(c, None),
        // Never waits: a full queue takes it in its overflow list.
        Delivery::Queue(q) => q.push_overflow(c),
        Delivery::Future(s) => s.complete(c),
        Delivery::Keep | Delivery::Local | Delivery::Detach => drop(c),
    }
}

/// Uses a [`Ring`](super::Ring) from any thread (`Send + Sync`, cheap to clone):
/// submit any [`Op`] with any asynchronous route, register and close targets, cancel
/// operations, shut the ring down. The ring picks requests up when it is next driven; a
/// request wakes a ring blocked waiting for completions. Requests from one thread are
/// carried out in the order that thread made them.
///
/// ```
/// use iocomplete::{CompletionQueue, Op, Ring};
/// use std::sync::Arc;
/// let ring = Ring::new()?;
/// let (handle, driver) = ring.spawn()?;
/// // Targets can be registered after the ring has left for its own thread.
/// let file = handle.register(tempfile::tempfile().unwrap())?;
/// let q = Arc::new(CompletionQueue::new(16));
/// handle.submit_to(Op::fsync(file, false).tag(1), &q);
/// let c = q.pop_timeout(std::time::Duration::from_secs(5)).unwrap();
/// assert_eq!(c.tag(), 1);
/// assert!(c.is_ok());
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
            .field("closed", &self.shared.signal.is_closed())
            .finish()
    }
}

impl RingHandle {
    pub(crate) fn new(shared: Arc<HandleShared>) -> RingHandle {
        RingHandle { shared }
    }

    /// The state this handle shares with its ring.
    pub(crate) fn shared(&self) -> &Arc<HandleShared> {
        &self.shared
    }

    /// Push a command and wake the ring. If the ring is gone, an operation completes at
    /// once with `Cancelled` (exactly once: by this thread, or by the ring's final drain).
    pub(crate) fn send(&self, cmd: Cmd) {
        if self.shared.push(cmd) {
            self.shared.signal.wake();
        }
    }

    /// Submit; the completion is pushed to `queue`. Multishot operations
    /// ([`Op::read_multishot`]) deliver each of their completions there.
    pub fn submit_to(&self, op: Op, queue: &Arc<CompletionQueue<Completion>>) {
        self.send(Cmd::Op(op, Delivery::Queue(queue.clone())));
    }

    /// Submit with a completion routine (runs on the ring's thread).
    pub fn submit_then(&self, op: Op, f: impl FnOnce(Completion) + Send + 'static) {
        self.send(Cmd::Op(op, Delivery::Routine(Box::new(f))));
    }

    /// Submit; returns a future resolving to the completion. Dropping the future cancels
    /// the operation (see [`OpFuture`]).
    pub fn submit_future(&self, op: Op) -> OpFuture {
        let slot = Arc::new(FutureSlot::default());
        self.send(Cmd::Op(op, Delivery::Future(slot.clone())));
        OpFuture::new(slot, self.shared.signal.clone())
    }

    /// Submit and forget; buffers are still reclaimed.
    pub fn detach(&self, op: Op) {
        self.send(Cmd::Op(op, Delivery::Detach));
    }

    /// Register a file descriptor with the ring, from any thread; the ring takes
    /// ownership of it, as [`Ring::register`](super::Ring::register) does. The target is
    /// usable at once — through this handle, on the ring's own thread, or by any thread
    /// this one hands it to — and its facts are read now, on the calling thread.
    ///
    /// The descriptor stays open until the ring has installed the target and, after a
    /// [`close`](Self::close), closed it: a thread that registers and closes in a tight
    /// loop, never waiting for the ring, holds as many descriptors as it outruns it by
    /// (await an operation now and then — requests from one thread are carried out in
    /// order).
    ///
    /// Errors: what [`FdInfo::probe`] returns, and [`ErrorKind::RingClosed`] when the
    /// ring is gone (the descriptor is then closed).
    pub fn register(&self, fd: impl Into<OwnedFd>) -> Result<Target> {
        let fd: OwnedFd = fd.into();
        let info = FdInfo::probe(fd.as_raw_fd())?;
        if self.shared.signal.is_closed() || self.shared.is_cancelling_all() {
            return Err(ErrorKind::RingClosed.into());
        }
        let target = {
            let mut ids = self.shared.ids();
            let target = HandleShared::new_target(&mut ids, self.shared.ring)?;
            ids.pending.push(Registration { target, fd, info });
            // Relaxed: published with the lock's release; see `has_registrations`.
            self.shared
                .registrations
                .store(ids.pending.len(), Ordering::Relaxed);
            target
        };
        // SeqCst: the handshake of `Signal::close` — if the ring is gone, its final
        // drain may have missed this registration: drop it ourselves.
        if self.shared.signal.is_closed() {
            self.shared.drain_cancelled();
            return Err(ErrorKind::RingClosed.into());
        }
        self.shared.signal.wake();
        Ok(target)
    }

    /// Close a target, as [`Ring::close`](super::Ring::close) does, after the operations
    /// this thread sent before have started: operations in flight finish normally, later
    /// ones complete with [`ErrorKind::StaleTarget`].
    ///
    /// Errors: [`ErrorKind::StaleTarget`] for a target of another ring,
    /// [`ErrorKind::RingClosed`] when the ring is gone. Closing a target twice is
    /// harmless (the second close finds nothing).
    pub fn close(&self, target: Target) -> Result<()> {
        if target.ring != self.shared.ring {
            return Err(ErrorKind::StaleTarget.into());
        }
        if self.shared.signal.is_closed() || self.shared.is_cancelling_all() {
            return Err(ErrorKind::RingClosed.into());
        }
        self.send(Cmd::Close(target));
        Ok(())
    }

    /// Ask the ring to cancel operation `id` (as [`Ring::cancel`](super::Ring::cancel)):
    /// it then completes — once — with [`ErrorKind::Cancelled`], or with its own result
    /// if it won the race. Ids come from [`Completion::id`] (e.g. a multishot read's
    /// completions), from the ring's own [`Submission`](super::Submission)s, or from
    /// [`OpFuture::id`]. Nothing happens if the operation has completed meanwhile, if it
    /// belongs to another ring, or if the ring is gone.
    pub fn cancel(&self, id: OpId) {
        if id.ring() == self.shared.ring {
            self.shared.signal.cancel(id);
        }
    }

    /// Ask the driver loop ([`Ring::drive_until_shutdown`](super::Ring::drive_until_shutdown),
    /// [`Ring::spawn`](super::Ring::spawn), [`Ring::poll_complete`](super::Ring::poll_complete))
    /// to return once everything submitted so far has completed. Operations in flight run
    /// to their end: a read of an idle pipe keeps the ring running until data comes (see
    /// [`shutdown_now`](Self::shutdown_now)).
    pub fn shutdown(&self) {
        // Release: see `HandleShared::is_shut_down`.
        self.shared.shut_down.store(true, Ordering::Release);
        self.shared.signal.wake();
    }

    /// Shut down now: cancel every operation in flight, complete everything handles send
    /// from now on with [`ErrorKind::Cancelled`], and let the driver loop return once every
    /// operation has completed (join the driver to wait for that). Each operation still
    /// completes exactly once, and its buffers come back.
    pub fn shutdown_now(&self) {
        // Release: pairs with the Acquire in `is_cancelling_all`.
        self.shared.cancel_all.store(true, Ordering::Release);
        self.shutdown();
    }

    /// Wake the ring if its driving thread is waiting in the kernel (in
    /// [`Ring::run_once`](super::Ring::run_once) with a timeout, or
    /// [`Ring::drive_until_shutdown`](super::Ring::drive_until_shutdown)), e.g. after
    /// handing that thread work through another channel. Cheap when repeated: one pending
    /// wake-up covers any number of calls.
    pub fn wake(&self) {
        // Even a spinning driver: it does not look at the caller's other channel.
        self.shared.signal.wake_now();
    }

    /// Whether the ring is gone, or shut down with [`shutdown_now`](Self::shutdown_now):
    /// submissions then complete at once with `Cancelled`, and `register` and `close`
    /// answer [`ErrorKind::RingClosed`].
    pub fn is_closed(&self) -> bool {
        self.shared.signal.is_closed() || self.shared.is_cancelling_all()
    }
}
