//! The completion port every driver runs on, and the [`Driver`] shape they share.
//!
//! A driver (reader, FIFO receiver, split, dma) turns its state machine's actions into ring
//! operations and the operations' completions back into the machine's events. The
//! [`Port`] is the part they all need: it submits an operation on behalf of a *child* (the
//! driver's record of what the operation is for), keeps the tag ↔ child map (a `slab`:
//! O(1) both ways, the operation's tag is the child's key), owns the driver's one timer
//! operation, and hands back each completion once, with its child, as a typed
//! `Result<u32, Error>` — never an errno.
//!
//! Completions reach the port through a [`CompletionQueue`] that whoever drives the ring
//! fills; the timer has a queue of its own, so that after a driver is dropped mid-flight an
//! armed timer keeps only that small queue alive, and the children's buffers are freed as
//! soon as their own completions arrive.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use slab::Slab;

use super::completion::{Bufs, Completion};
use super::handle::RingHandle;
use super::op::kernel_deadline;
use super::op::{Op, OpId};
use super::Ring;
use crate::error::{Error, Result};
use crate::queue::CompletionQueue;

/// Where the port's timer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Not armed, or its completion came back.
    Idle,
    /// In the kernel.
    Armed(OpId),
    /// In the kernel, asked to cancel; its completion is still to come.
    Cancelling(OpId),
}

/// One operation's completion, routed back to the child it was submitted for.
#[derive(Debug)]
pub(crate) struct Done<T> {
    /// What the driver recorded when it submitted the operation.
    pub(crate) child: T,
    /// Bytes transferred (for a poll, the ready mask), or the typed error.
    pub(crate) result: Result<u32>,
    /// The operation's buffers, back from the kernel.
    pub(crate) bufs: Bufs,
    /// A multishot operation stays armed: more completions follow for the same child.
    pub(crate) more: bool,
}

/// What [`Port::next`] hands back.
#[derive(Debug)]
pub(crate) enum PortEvent<T> {
    /// An operation completed.
    Op(Done<T>),
    /// The timer's completion: `fired` when the deadline passed; false when it was
    /// cancelled (or refused) — it never fired and never will.
    Timer {
        /// The deadline passed.
        fired: bool,
    },
}

/// A driver's completion port: children's operations in, their completions out.
///
/// `T` is the driver's record of a child (copied out with each completion; a multishot
/// operation keeps it until its last completion).
pub(crate) struct Port<T> {
    sink: Arc<CompletionQueue<Completion>>,
    timer_sink: Arc<CompletionQueue<Completion>>,
    children: Slab<(OpId, T)>,
    timer: Timer,
    /// Set by [`cancel_on_drop`](Self::cancel_on_drop): a dropped port asks the ring
    /// through it to cancel what it has in flight.
    handle: Option<RingHandle>,
}

impl<T> fmt::Debug for Port<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Port")
            .field("children", &self.children.len())
            .field("timer", &self.timer)
            .field("queued", &self.sink.len())
            .finish()
    }
}

impl<T: Copy> Port<T> {
    /// A port for up to `capacity` operations in flight at once (more still work; the
    /// queue and the map then grow, allocating).
    pub(crate) fn new(capacity: usize) -> Port<T> {
        Port {
            sink: Arc::new(CompletionQueue::new(capacity.max(1))),
            timer_sink: Arc::new(CompletionQueue::new(1)),
            children: Slab::with_capacity(capacity),
            timer: Timer::Idle,
            handle: None,
        }
    }

    /// Submit `op` for `child`; returns the child's key. The operation's tag is the key
    /// (whatever tag `op` had is replaced). An operation the ring refuses completes like
    /// any other, with its typed error, at the next [`next`](Self::next).
    pub(crate) fn submit(&mut self, ring: &mut Ring, op: Op, child: T) -> usize {
        let entry = self.children.vacant_entry();
        let key = entry.key();
        let id = ring.submit(op.tag(key as u64)).to_queue(&self.sink);
        entry.insert((id, child));
        key
    }

    /// Ask the ring to cancel `key`'s operation. It still completes, once, with
    /// [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled) or its own result. False when
    /// `key` is not in flight, or its completion already arrived and waits in the port.
    pub(crate) fn cancel(&self, ring: &mut Ring, key: usize) -> bool {
        self.children
            .get(key)
            .is_some_and(|&(id, _)| ring.cancel(id))
    }

    /// The key of the first child in flight that `pred` accepts.
    pub(crate) fn find(&self, mut pred: impl FnMut(&T) -> bool) -> Option<usize> {
        self.children
            .iter()
            .find_map(|(k, (_, c))| pred(c).then_some(k))
    }

    /// Operations in flight, not counting the timer.
    pub(crate) fn in_flight(&self) -> usize {
        self.children.len()
    }

    /// Whether the timer's completion is still to come.
    pub(crate) fn timer_pending(&self) -> bool {
        self.timer != Timer::Idle
    }

    /// Whether a completion (or the timer's) waits for [`next`](Self::next): one can
    /// arrive while the driver submits (a full submission queue makes the ring reap), so
    /// a driver about to block in the ring checks this first.
    pub(crate) fn has_events(&self) -> bool {
        !self.sink.is_empty() || !self.timer_sink.is_empty()
    }

    /// Arm the timer to fire after `after`. False, and nothing is submitted, when it is
    /// already armed or `after` is beyond what a kernel timer can reach (it could never
    /// fire: see [`kernel_deadline`]).
    pub(crate) fn arm_timer(&mut self, ring: &mut Ring, after: Duration) -> bool {
        if self.timer != Timer::Idle {
            return false;
        }
        let Some(after) = kernel_deadline(Some(after)) else {
            return false;
        };
        let id = ring.submit(Op::timeout(after)).to_queue(&self.timer_sink);
        self.timer = Timer::Armed(id);
        true
    }

    /// Ask the ring to cancel the armed timer. True when a timer completion is still to
    /// come (cancelled, or fired after all); false when none is armed.
    pub(crate) fn cancel_timer(&mut self, ring: &mut Ring) -> bool {
        match self.timer {
            Timer::Armed(id) => {
                ring.cancel(id);
                self.timer = Timer::Cancelling(id);
                true
            }
            Timer::Cancelling(_) => true,
            Timer::Idle => false,
        }
    }

    /// The next completion that arrived: the children's first, then the timer's.
    pub(crate) fn next(&mut self) -> Option<PortEvent<T>> {
        loop {
            if let Some(mut c) = self.sink.pop() {
                let key = c.tag() as usize;
                let more = c.has_more();
                let child = if more {
                    self.children.get(key).map(|&(_, c)| c)
                } else {
                    self.children.try_remove(key).map(|(_, c)| c)
                };
                let Some(child) = child else {
                    // Every operation on `sink` was submitted with its key, and a key is
                    // freed only with its operation's last completion.
                    debug_assert!(false, "port: completion with unknown key {key}");
                    continue;
                };
                return Some(PortEvent::Op(Done {
                    child,
                    result: c.result().map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                    bufs: c.take_bufs(),
                    more,
                }));
            }
            let c = self.timer_sink.pop()?;
            self.timer = Timer::Idle;
            // Fired: `TimedOut`. Anything else — cancelled, or a timer the ring or kernel
            // refused — never fired and never will.
            let fired = c.result().is_err_and(|e| e.is_timed_out());
            return Some(PortEvent::Timer { fired });
        }
    }

    /// Give the port a handle to its ring, so that dropping it mid-flight cancels what it
    /// has in the kernel (a read on a silent source, an armed timer) instead of leaving it
    /// there until the ring goes.
    pub(crate) fn cancel_on_drop(&mut self, ring: &mut Ring) -> Result<()> {
        if self.handle.is_none() {
            self.handle = Some(ring.handle()?);
        }
        Ok(())
    }
}

impl<T> Drop for Port<T> {
    /// Operations in flight keep their buffers until the kernel returns them: their
    /// completions land in the port's queues, which the ring frees with the last of them.
    /// Completions that already arrived are dropped now (their buffers go back to the
    /// pool); with a handle, what is still in flight is cancelled.
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            for (_, &(id, _)) in &self.children {
                h.cancel(id);
            }
            if let Timer::Armed(id) = self.timer {
                h.cancel(id);
            }
        }
        while self.sink.pop().is_some() {}
        while self.timer_sink.pop().is_some() {}
    }
}

/// What every driver in the crate is: a state machine's actions carried out on a
/// [`Ring`], one request (or one transaction at a time) producing one `Output`.
///
/// A driver does nothing by itself: [`process`](Driver::process) consumes the completions
/// that arrived and submits what the machine asks for next; [`step`](Driver::step) drives
/// the ring once and processes; [`run`](Driver::run) drives until the output is there.
/// Several drivers (and any other operations) can share one ring: drive the ring once,
/// then `process` each.
///
/// ```
/// use iocomplete::{Driver, Op, Result, Ring, Ticket};
///
/// /// A driver of one no-op: its output is the op's tag.
/// struct Nop(Option<Ticket>);
///
/// impl Driver for Nop {
///     type Output = u64;
///     fn process(&mut self, ring: &mut Ring) -> Result<Option<u64>> {
///         match self.0.take() {
///             Some(t) if ring.is_done(&t) => Ok(Some(ring.wait(t)?.tag())),
///             other => {
///                 self.0 = other;
///                 Ok(None)
///             }
///         }
///     }
///     fn cancel(&mut self, ring: &mut Ring) -> bool {
///         self.0.as_ref().is_some_and(|t| ring.cancel(t.id()))
///     }
///     fn is_idle(&self) -> bool {
///         self.0.is_none()
///     }
/// }
///
/// let mut ring = Ring::new()?;
/// let mut nop = Nop(Some(ring.submit(Op::nop().tag(7)).ticket()));
/// assert_eq!(nop.run(&mut ring)?, 7);
/// let again = nop.run(&mut ring).unwrap_err(); // handed out once
/// assert!(matches!(again.kind(), iocomplete::ErrorKind::NotInProgress { .. }));
/// # Ok::<(), iocomplete::Error>(())
/// ```
pub trait Driver {
    /// What the driver produces when its request (or transaction) ends.
    type Output;

    /// Consume the completions that arrived, submit what the machine asks for next, and
    /// return the output the first time it is available (`None` before, and after it was
    /// handed out). Does not drive the ring.
    ///
    /// # Errors
    ///
    /// If the ring failed, or is not the one the driver was built for.
    fn process(&mut self, ring: &mut Ring) -> Result<Option<Self::Output>>;

    /// Ask the driver to end early: what it has in flight is cancelled, and it completes —
    /// once, as always — with [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled) (or
    /// with the status that came first). Keep driving it until the output is there.
    /// Returns false when there is nothing to cancel.
    fn cancel(&mut self, ring: &mut Ring) -> bool;

    /// True when nothing is in progress: the output was handed out, or (for a driver of
    /// one transaction at a time) no transaction was started.
    fn is_idle(&self) -> bool;

    /// Wait in the ring for completions (up to `timeout`; `None`: until one arrives).
    /// Drivers that other threads feed override it to wake up for them too.
    ///
    /// # Errors
    ///
    /// If the ring fails.
    fn wait(&mut self, ring: &mut Ring, timeout: Option<Duration>) -> Result<()> {
        ring.run_once(timeout).map(drop)
    }

    /// [`process`](Driver::process); if the output is not there yet, [`wait`](Driver::wait)
    /// once (up to `timeout`) and process again.
    ///
    /// # Errors
    ///
    /// As [`process`](Driver::process) and [`wait`](Driver::wait).
    fn step(&mut self, ring: &mut Ring, timeout: Option<Duration>) -> Result<Option<Self::Output>> {
        if let Some(out) = self.process(ring)? {
            return Ok(Some(out));
        }
        if self.is_idle() {
            return Ok(None);
        }
        self.wait(ring, timeout)?;
        self.process(ring)
    }

    /// Drive the ring until the output is there, and return it.
    ///
    /// # Errors
    ///
    /// If the ring fails; [`ErrorKind::NotInProgress`](crate::ErrorKind::NotInProgress) if
    /// nothing is in progress (the output was already handed out, or no transaction was
    /// started).
    fn run(&mut self, ring: &mut Ring) -> Result<Self::Output> {
        loop {
            if let Some(out) = self.process(ring)? {
                return Ok(out);
            }
            if self.is_idle() {
                return Err(Error::not_in_progress("driver request"));
            }
            self.wait(ring, Some(Duration::from_millis(100)))?;
        }
    }
}

#[cfg(test)]
mod tests;
