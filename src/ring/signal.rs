//! `Signal`: how the ring is woken and told what to cancel — an eventfd (the ring keeps a
//! multishot poll armed on it), a queue of operations to cancel, and the ring's "closed"
//! flag. Shared by the ring, its handles, and the futures of its operations (a dropped
//! [`OpFuture`](super::OpFuture) cancels through it).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::SegQueue;

use crate::error::{Error, Result};
use crate::waiters::AwakeFlag;

use super::op::OpId;

/// See the module docs.
pub(crate) struct Signal {
    /// Operations to cancel, from handles and from owners dropped without access to the
    /// ring (a future, a reader, a FIFO receiver).
    cancels: SegQueue<OpId>,
    wake: OwnedFd,
    /// A wake-up was written to `wake` and the ring has not taken its requests since
    /// (see `wake`, `take_wake`): later wake-ups need no syscall of their own.
    wake_pending: AtomicBool,
    /// Set when the ring is dropped: nobody will pick up requests any more.
    closed: AtomicBool,
    /// The ring's driver loop is spinning (`Ring::spin_while_busy`): it will look at its
    /// inbox and cancels again before it sleeps, so a request needs no wake-up (see
    /// `needs_wake`). Down whenever the ring might block without looking again.
    awake: AwakeFlag,
}

impl Signal {
    pub(crate) fn new() -> Result<Signal> {
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::last_os());
        }
        Ok(Signal {
            cancels: SegQueue::new(),
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
            wake_pending: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            awake: AwakeFlag::default(),
        })
    }

    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    pub(crate) fn pop_cancel(&self) -> Option<OpId> {
        self.cancels.pop()
    }

    /// Wake the ring for a request just made visible (pushed), unless its driver loop is
    /// spinning and will see it anyway ([`needs_wake`](Self::needs_wake)).
    pub(crate) fn wake(&self) {
        if self.needs_wake() {
            self.wake_now();
        }
    }

    /// After making a request visible: whether the ring must be woken for it — not while
    /// its driver loop spins (see [`AwakeFlag`]).
    pub(crate) fn needs_wake(&self) -> bool {
        self.awake.needs_wake()
    }

    /// The driver loop spins: requests from now on skip their wake-up; they are seen by
    /// the ring's next look at its queues, which comes after an
    /// [`end_awake`](Self::end_awake) — before the loop sleeps, and before any wait in the
    /// kernel (`Ring::enter`), so a message that blocks the ring (a nested wait) cannot
    /// miss one.
    pub(crate) fn set_awake(&self) {
        self.awake.set();
    }

    /// The ring is about to look at its queues before sleeping: requests from now on wake
    /// it. Returns whether it was marked awake — then a request may have skipped its
    /// wake-up, and the caller must look before it sleeps.
    pub(crate) fn end_awake(&self) -> bool {
        self.awake.end()
    }

    /// Whether cancels are waiting for the ring (its spinning driver checks).
    pub(crate) fn has_cancels(&self) -> bool {
        !self.cancels.is_empty()
    }

    /// Wake the ring whether or not its driver spins: one eventfd write per batch of
    /// requests.
    ///
    /// SeqCst swap here and in [`take_wake`](Self::take_wake): if this swap finds `true`,
    /// the ring's next `take_wake` comes after it in the flag's modification order, reads
    /// what it wrote (synchronizing with it), and is followed by the ring taking its
    /// requests — so it sees the one pushed before this call; meanwhile the write that set
    /// the flag is still on its way to waking the ring. If it finds `false`, this call
    /// writes.
    pub(crate) fn wake_now(&self) {
        if self.wake_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd. A full counter (EAGAIN)
        // means a wake-up is already pending, which is all we need.
        let _ = unsafe { libc::write(self.wake_fd(), (&one as *const u64).cast(), 8) };
    }

    /// The ring is about to take its requests: wake-ups from now on must write again.
    pub(crate) fn take_wake(&self) {
        // SeqCst: see `wake`.
        self.wake_pending.swap(false, Ordering::SeqCst);
    }

    pub(crate) fn clear_wake(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; EAGAIN (nothing pending) is fine.
        let _ = unsafe { libc::read(self.wake_fd(), (&mut v as *mut u64).cast(), 8) };
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

    /// Ask the ring to cancel operation `id` when it is next driven, and wake it. Nothing
    /// happens if the operation has completed meanwhile (the id's generation no longer
    /// matches), or if the ring is gone (it cancelled everything as it closed).
    pub(crate) fn cancel(&self, id: OpId) {
        if self.is_closed() {
            return;
        }
        self.cancels.push(id);
        self.wake();
    }
}
