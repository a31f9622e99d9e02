//! Cross-ring hand-off: messages posted to a ring, operations run on another ring with
//! their completion brought back, and the doorbell that announces them.
//!
//! A message travels in the target ring's inbox (the queue its [`RingHandle`]s use); the
//! doorbell only wakes the target. That split is what makes hand-off exactly-once across
//! rings whatever the shutdown order: the inbox's handshake with the target's drop
//! (`HandleShared::push`, `Signal::close`) guarantees that every message either runs on
//! the target or is refused — run with `Err(RingClosed)` — by whichever thread found the
//! target gone. The doorbell carries nothing that could be lost.
//!
//! From a ring's own thread ([`Ring::post`], [`Ring::submit_on`]), the doorbell is an
//! `IORING_OP_MSG_RING` queued on the sending ring: it leaves with that ring's next
//! submission, in the same `io_uring_enter`, and lands in the target's CQ as a CQE that
//! makes the target read its inbox — no system call of its own, no eventfd read on the
//! target. Where either side has no `MSG_RING` (the thread-pool backend, an old kernel, a
//! failed doorbell), the target's eventfd is written, as a [`RingHandle`] does. And while
//! the target's driver loop is spinning (`Ring::drive_until_shutdown`), no doorbell is
//! needed at all: it looks at its inbox again before it sleeps (`waiters::AwakeFlag`).

use std::any::Any;
use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use io_uring::{opcode, types};

use crate::error::{ErrorKind, Result};

use super::completion::{Completion, Delivery};
use super::handle::{complete_unsent, Cmd, HandleShared, Message, RingHandle};
use super::op::{sentinel, Op, OpId};
use super::Ring;

/// The ring the driver passed as `dyn Any` (see [`Message`]; always a `Ring`).
fn as_ring(ring: Option<&mut dyn Any>) -> Option<&mut Ring> {
    ring.and_then(|r| r.downcast_mut::<Ring>())
}

/// Wrap a message for the inbox.
fn message(f: impl FnOnce(Result<&mut Ring>) + Send + 'static) -> Message {
    Box::new(move |ring: Option<&mut dyn Any>| match as_ring(ring) {
        Some(ring) => f(Ok(ring)),
        None => f(Err(ErrorKind::RingClosed.into())),
    })
}

impl RingHandle {
    /// Post a message to the ring: `f` runs once, on the thread driving the ring, with
    /// the ring itself — so it can do anything the ring's owner can: start operations on
    /// the ring's registered targets and buffers, [`post`](Ring::post) to other rings,
    /// hand work back. Messages from one thread run in the order they were posted, in
    /// order with that thread's other requests (operations, closes).
    ///
    /// If the ring is gone — dropped, or shut down with
    /// [`shutdown_now`](Self::shutdown_now) — before the message runs, `f` runs instead
    /// with `Err(`[`ErrorKind::RingClosed`]`)`, once, on whichever thread found that out:
    /// this one, or the one dropping the ring. A graceful [`shutdown`](Self::shutdown)
    /// still runs the messages posted before the driver loop returns.
    ///
    /// Each message is one allocation (its closure). From a ring's own thread,
    /// [`Ring::post`] announces the message without a system call of its own.
    ///
    /// ```
    /// use iocomplete::{Op, Ring};
    /// use std::sync::mpsc;
    /// let (handle, driver) = Ring::new()?.spawn()?;
    /// let (tx, rx) = mpsc::channel();
    /// handle.post(move |ring| {
    ///     // On the ring's thread, with the ring.
    ///     let ring = ring.expect("the ring is running");
    ///     ring.submit(Op::nop().tag(7)).then(move |c| tx.send(c.tag()).unwrap());
    /// });
    /// assert_eq!(rx.recv().unwrap(), 7);
    /// handle.shutdown();
    /// driver.join().unwrap()?;
    /// # Ok::<(), iocomplete::Error>(())
    /// ```
    pub fn post(&self, f: impl FnOnce(Result<&mut Ring>) + Send + 'static) {
        self.send(Cmd::Post(message(f)));
    }
}

impl Ring {
    /// Post a message to the ring behind `to`, from this ring's thread: as
    /// [`RingHandle::post`] (same order, same exactly-once guarantee), but the target is
    /// woken by an `IORING_OP_MSG_RING` doorbell queued on this ring, which leaves with
    /// this ring's next submission ([`run_once`](Self::run_once), [`poll`](Self::poll),
    /// or any other turn) instead of a system call now. Drive this ring after posting,
    /// as after submitting an operation. Without `MSG_RING` on both sides
    /// ([`Capabilities::msg_ring`](super::Capabilities::msg_ring), the thread-pool
    /// backend) the target is woken at once, as by a handle; so it is when this ring is
    /// dropped before its next turn (its drop submits the doorbell, or writes the
    /// target's eventfd if the doorbell fails), and when the target's driver loop is
    /// spinning it needs no doorbell at all. `to` may be this ring's own handle: the
    /// message then runs at this ring's next turn.
    ///
    /// ```
    /// use iocomplete::{Op, RingSet};
    /// use std::sync::mpsc;
    /// let set = RingSet::builder().rings(2).spawn()?;
    /// let b = set.handles()[1].clone();
    /// let (tx, rx) = mpsc::channel();
    /// // A message to ring 0, which forwards one to ring 1 from its own thread.
    /// set.handles()[0].post(move |a| {
    ///     let a = a.expect("ring 0 runs");
    ///     a.post(&b, move |b| tx.send(b.is_ok()).unwrap());
    /// });
    /// assert!(rx.recv().unwrap());
    /// set.shutdown()?;
    /// # Ok::<(), iocomplete::Error>(())
    /// ```
    pub fn post(&mut self, to: &RingHandle, f: impl FnOnce(Result<&mut Ring>) + Send + 'static) {
        let target = to.shared();
        if target.push(Cmd::Post(message(f))) {
            self.ring_doorbell(target);
        }
    }

    /// Run `op` on the ring behind `on` — on its registered targets (`op`'s target must
    /// be one of that ring's) and with its buffer registrations — and bring its
    /// completion back: `then` runs once, on this ring's thread, with this ring and the
    /// completion (buffers included). Both legs are messages ([`post`](Self::post)): the
    /// request leaves with this ring's next submission, the completion with `on`'s.
    /// Three allocations (the two messages and the completion route).
    ///
    /// Exactly once, whatever shuts down first: if `on`'s ring is gone before the
    /// operation starts, the completion is `Cancelled` (buffers back, nothing reached the
    /// kernel); if this ring is gone when the completion comes back, `then` runs with
    /// `Err(`[`ErrorKind::RingClosed`]`)` and the completion, on the thread that found
    /// out. An operation in flight on `on` when its ring is dropped completes as that
    /// ring's drop decides (`Cancelled`, or its own result).
    ///
    /// An operation on a target of another ring (this one's, say) completes with
    /// [`ErrorKind::StaleTarget`] without reaching the kernel; a multishot read cannot be
    /// handed off (`InvalidInput`, as for a completion routine). The returned [`HandOff`]
    /// cancels it from any thread; dropping it does not.
    ///
    /// ```
    /// use iocomplete::{Op, RingSet};
    /// use std::sync::mpsc;
    /// let set = RingSet::builder().rings(2).spawn()?;
    /// // A file registered with ring 1, synced from ring 0's thread through ring 1.
    /// let file = set.handles()[1].register(tempfile::tempfile().unwrap())?;
    /// let b = set.handles()[1].clone();
    /// let (tx, rx) = mpsc::channel();
    /// set.handles()[0].post(move |a| {
    ///     let a = a.expect("ring 0 runs");
    ///     a.submit_on(&b, Op::fsync(file, false), move |a, c| {
    ///         // Back on ring 0's thread.
    ///         tx.send((a.is_ok(), c.is_ok())).unwrap();
    ///     });
    /// });
    /// assert_eq!(rx.recv().unwrap(), (true, true));
    /// set.shutdown()?;
    /// # Ok::<(), iocomplete::Error>(())
    /// ```
    pub fn submit_on(
        &mut self,
        on: &RingHandle,
        op: Op,
        then: impl FnOnce(Result<&mut Ring>, Completion) + Send + 'static,
    ) -> HandOff {
        // Without its wake-up poll this ring would not notice a completion brought back by
        // eventfd; `arm_wake` fails only when the SQ refuses the poll, and then the
        // doorbells of `post` (a CQE, not a poll) still reach it.
        let _ = self.arm_wake();
        let back = RingHandle::new(self.shared.clone());
        let hand_off = HandOff {
            on: on.clone(),
            state: Arc::new(Mutex::new(HandOffState::default())),
        };
        let state = hand_off.state.clone();
        self.post(on, move |remote| {
            let home = Delivery::WithRing(Box::new(move |c, ring| {
                let then = move |r: Result<&mut Ring>| then(r, c);
                match as_ring(ring) {
                    Some(ring) => ring.post(&back, then),
                    None => back.post(then),
                }
            }));
            // A `cancel` before this look: the operation never starts. After it: either the
            // cancel finds the id stored below, or the look after storing it finds the
            // cancel (both under the lock). Never held while the operation starts or
            // completes, which may run `then` (and `then` may cancel).
            let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
            let cancelled = lock().cancelled;
            match remote {
                Ok(ring) if !cancelled => {
                    let id = ring.start(op, home);
                    let cancel_now = {
                        let mut st = lock();
                        st.id = Some(id);
                        st.cancelled
                    };
                    if cancel_now {
                        ring.cancel(id);
                    }
                }
                _ => complete_unsent(op, home),
            }
        });
        hand_off
    }

    /// Wake `target` after pushing to its inbox: not at all while its driver loop spins
    /// (it will see the message), else `MSG_RING` from this ring when both have it, else
    /// the target's eventfd.
    fn ring_doorbell(&mut self, target: &Arc<HandleShared>) {
        if !target.signal.needs_wake() {
            return;
        }
        let fd = match (&self.backend, self.caps.msg_ring) {
            (super::Backend::Uring(_), true) if !Arc::ptr_eq(target, &self.shared) => {
                target.doorbell()
            }
            _ => None,
        };
        let Some(fd) = fd else {
            target.signal.wake_now();
            return;
        };
        let key = self.doorbells.vacant_key();
        let Some(ud) = sentinel::doorbell_sent(key) else {
            target.signal.wake_now();
            return;
        };
        // The descriptor stays open (its `Arc` in the table) until this doorbell's CQE.
        let sqe = opcode::MsgRingData::new(types::Fd(fd.as_raw_fd()), 0, sentinel::DOORBELL, None)
            .build()
            .user_data(ud);
        self.doorbells.insert((target.clone(), fd));
        if self.push_sqes(&[sqe]).is_ok() {
            self.in_kernel += 1;
        } else {
            self.doorbells.remove(key);
            target.signal.wake_now();
        }
    }

    /// The CQE of doorbell `index`: release the target's descriptor; if the doorbell did
    /// not reach it (its ring is not enabled yet, a full CQ, a cancel at drop), wake it by
    /// its eventfd instead.
    pub(super) fn doorbell_done(&mut self, index: usize, res: i32) {
        let Some((target, _fd)) = self.doorbells.try_remove(index) else {
            self.stats.stale_cqes += 1;
            debug_assert!(false, "doorbell CQE for no doorbell (index {index})");
            return;
        };
        self.in_kernel -= 1;
        if res < 0 {
            target.signal.wake_now();
        } else {
            self.stats.doorbells += 1;
        }
    }
}

/// An operation handed to another ring by [`Ring::submit_on`]: cancel it from any thread.
/// Dropping it lets the operation run.
pub struct HandOff {
    on: RingHandle,
    state: Arc<Mutex<HandOffState>>,
}

#[derive(Debug, Default)]
struct HandOffState {
    /// `cancel` was called.
    cancelled: bool,
    /// The operation's id on its ring, once it started.
    id: Option<OpId>,
}

impl fmt::Debug for HandOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandOff")
            .field(
                "state",
                &*self.state.lock().unwrap_or_else(|e| e.into_inner()),
            )
            .finish()
    }
}

impl HandOff {
    /// Cancel the operation: if its ring has not started it yet, it never starts and
    /// comes home `Cancelled`; if it is in flight, its ring cancels it (it comes home
    /// `Cancelled`, or with its own result if it won the race, as
    /// [`RingHandle::cancel`]); if it has completed, nothing happens. Either way its
    /// completion comes home exactly once. Repeating the call is harmless.
    ///
    /// ```
    /// use iocomplete::{ErrorKind, Op, RingSet};
    /// use std::os::fd::OwnedFd;
    /// use std::sync::mpsc;
    /// let set = RingSet::builder().rings(2).spawn()?;
    /// // A read of a pipe nobody writes: only a cancel ends it.
    /// let (r, _w) = std::io::pipe().unwrap();
    /// let pipe = set.handles()[1].register(OwnedFd::from(r))?;
    /// let pool = iocomplete::BufferPool::builder().slots(1).slot_len(4096).build()?;
    /// let (b, buf) = (set.handles()[1].clone(), pool.try_get()?);
    /// let (tx, rx) = mpsc::channel();
    /// set.handles()[0].post(move |a| {
    ///     let a = a.expect("ring 0 runs");
    ///     let hand_off = a.submit_on(&b, Op::read(pipe, 0, buf), move |_, c| {
    ///         tx.send(c.error().map(|e| e.kind())).unwrap();
    ///     });
    ///     hand_off.cancel();
    /// });
    /// assert_eq!(rx.recv().unwrap(), Some(ErrorKind::Cancelled));
    /// set.shutdown()?;
    /// # Ok::<(), iocomplete::Error>(())
    /// ```
    pub fn cancel(&self) {
        let id = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.cancelled = true;
            st.id
        };
        if let Some(id) = id {
            self.on.cancel(id);
        }
    }
}
