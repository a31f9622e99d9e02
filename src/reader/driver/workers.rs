//! Where `on_read` runs, and what other threads tell the driver: the worker threads of
//! [`Dispatch::Workers`], their acknowledgements, and [`CancelHandle`]s.

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use crate::buf::PoolBuf;
use crate::error::{Error, Result};
use crate::queue::CompletionQueue;
use crate::reader::Seq;
use crate::ring::RingHandle;
use crate::waiters::SleepFlag;

/// `on_read(buf, offset)`: shared with the worker threads.
pub(super) type OnRead = Arc<dyn Fn(PoolBuf, u64) + Send + Sync>;

/// Where `on_read` runs: set with [`ContinuousReaderBuilder::dispatch`] for
/// [`Shared`](super::Shared) callbacks; [`Local`](super::Local) ones always run
/// [`Inline`](Dispatch::Inline).
///
/// [`ContinuousReaderBuilder::dispatch`]: super::ContinuousReaderBuilder::dispatch
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// On the thread that drives the ring, inside [`Driver::process`](crate::Driver::process).
    /// Calls never overlap. The default.
    Inline,
    /// On this many worker threads owned by the reader. Deliveries go through a
    /// [`CompletionQueue`] that the workers consume; each worker calls `on_read` and then
    /// acknowledges the delivery to the machine ([`ReaderEvent::Delivered`]). `on_read`
    /// may run on several workers at once; `on_failed` still runs only once every
    /// delivery is acknowledged, on the driving thread.
    ///
    /// [`ReaderEvent::Delivered`]: crate::reader::ReaderEvent::Delivered
    Workers(usize),
}

/// Cancels a [`ContinuousReader`](crate::ContinuousReader) from any thread (including
/// from inside `on_read`).
///
/// Cheap to clone. Cancelling cancels the reads in flight; the reader finishes with
/// [`FinishReason::Cancelled`](crate::FinishReason::Cancelled) once every completion is
/// back. Cancelling a finished reader does nothing.
#[derive(Clone)]
pub struct CancelHandle {
    pub(super) signal: Arc<Signal>,
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelHandle")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CancelHandle {
    /// Ask the reader to cancel.
    pub fn cancel(&self) {
        // Release: pairs with the Acquire load in the driver, so what this thread did
        // before asking is visible to the driver when it acts on the request.
        self.signal.cancel.store(true, Ordering::Release);
        self.signal.wake_driver();
    }

    /// Whether a cancel was requested.
    pub fn is_cancelled(&self) -> bool {
        // Relaxed: a snapshot for the caller.
        self.signal.cancel.load(Ordering::Relaxed)
    }
}

/// What the driver, its workers and cancel handles share.
#[derive(Debug, Default)]
pub(super) struct Signal {
    /// A cancel was requested (by a `CancelHandle` or `Driver::cancel`).
    pub(super) cancel: AtomicBool,
    /// The driver is about to block in the ring (or is blocked there). Whoever hands it
    /// work from another thread (an acknowledgement, a cancel) and finds this set wakes
    /// the ring. See the reader's `Driver::wait` for the handshake.
    pub(super) sleeping: SleepFlag,
    /// The reader's ring, for waking it: the ring keeps a poll armed on its wake-up
    /// eventfd, which ends a wait in `io_uring_enter`. Set at build.
    pub(super) ring: OnceLock<RingHandle>,
}

impl Signal {
    /// Wake the driver if it sleeps (or is about to). Called after publishing the work.
    fn wake_driver(&self) {
        // The other half of the handshake in the reader's `wait` (`SleepFlag`).
        if self.sleeping.must_wake() {
            if let Some(ring) = self.ring.get() {
                ring.wake();
            }
        }
    }
}

/// One delivery handed to a worker thread.
enum Work {
    Read { seq: Seq, offset: u64, buf: PoolBuf },
    Exit,
}

/// The worker threads of [`Dispatch::Workers`].
pub(super) struct Workers {
    work: Arc<CompletionQueue<Work>>,
    /// Acknowledgements (the delivery's `Seq`), pushed after `on_read` returned.
    acks: Arc<CompletionQueue<Seq>>,
    threads: Vec<JoinHandle<()>>,
    /// The first panic raised by `on_read` on a worker, re-raised by the driver once the
    /// reader has wound down.
    panic: Arc<Mutex<Option<Box<dyn Any + Send>>>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl Workers {
    /// Start `n` workers calling `on_read` for the deliveries of a reader of a pool of
    /// `slots` slots.
    pub(super) fn spawn(
        n: usize,
        slots: usize,
        on_read: &OnRead,
        signal: &Arc<Signal>,
    ) -> Result<Workers> {
        // Every queued delivery owns a distinct pool slot, so `slots` bounds the work
        // queue; plus one `Exit` per worker. Acknowledgements: at most one per delivery
        // not yet seen by the driver; twice the slots leaves room, and a full queue only
        // makes a worker yield until the driver drains it.
        let mut w = Workers {
            work: Arc::new(CompletionQueue::new(slots + n)),
            acks: Arc::new(CompletionQueue::new(2 * slots + 64)),
            threads: Vec::with_capacity(n),
            panic: Arc::new(Mutex::new(None)),
        };
        for i in 0..n {
            let work = w.work.clone();
            let acks = w.acks.clone();
            let panic = w.panic.clone();
            let on_read = on_read.clone();
            let signal = signal.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("iocomplete-reader-{i}"))
                .spawn(move || worker_loop(&work, &acks, &panic, &on_read, &signal));
            match spawned {
                Ok(t) => w.threads.push(t),
                Err(e) => {
                    w.shut_down();
                    return Err(Error::from_io(&e));
                }
            }
        }
        Ok(w)
    }

    /// Hand a delivery to the workers.
    pub(super) fn dispatch(&self, seq: Seq, offset: u64, buf: PoolBuf) {
        // Each queued delivery owns a distinct slot, so the queue (sized to the pool) has
        // room; wait while workers drain it all the same.
        self.work.push_wait(Work::Read { seq, offset, buf });
    }

    /// The next acknowledgement, if one arrived.
    pub(super) fn ack(&self) -> Option<Seq> {
        self.acks.pop()
    }

    /// Whether acknowledgements wait.
    pub(super) fn has_acks(&self) -> bool {
        !self.acks.is_empty()
    }

    /// The first panic `on_read` raised on a worker, once.
    pub(super) fn take_panic(&self) -> Option<Box<dyn Any + Send>> {
        self.panic.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Send every worker an `Exit` and join them (after the deliveries queued before it).
    /// Idempotent.
    pub(super) fn shut_down(&mut self) {
        for _ in 0..self.threads.len() {
            // The queue has room for one `Exit` per worker beyond every possible delivery;
            // wait while workers drain it anyway.
            self.work.push_wait(Work::Exit);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker_loop(
    work: &CompletionQueue<Work>,
    acks: &CompletionQueue<Seq>,
    panic: &Mutex<Option<Box<dyn Any + Send>>>,
    on_read: &OnRead,
    signal: &Signal,
) {
    loop {
        let (seq, offset, buf) = match work.pop_wait() {
            Work::Exit => return,
            Work::Read { seq, offset, buf } => (seq, offset, buf),
        };
        let r = catch_unwind(AssertUnwindSafe(|| on_read(buf, offset)));
        if let Err(p) = r {
            let mut slot = panic.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(p);
            // Release: as `CancelHandle::cancel`.
            signal.cancel.store(true, Ordering::Release);
        }
        // The acknowledgement is published after `on_read` returned. The queue's push
        // (Release) and the driver's pop (Acquire) order everything `on_read` did before
        // whatever the driver does next — in particular before `on_failed`.
        if let Err(ack) = acks.push(seq) {
            // Full: the driver drains acknowledgements once woken; wait for room.
            signal.wake_driver();
            acks.push_wait(ack);
        }
        signal.wake_driver();
    }
}
