//! `RingSet`: one ring per worker thread (thread-per-core), optionally pinned, sharing
//! one SQPOLL thread where they use one.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::error::{Error, Result};

use super::{Ring, RingBuilder, RingHandle};

/// Most rings a set holds.
const MAX_RINGS: usize = 1024;

/// Builder for a [`RingSet`] (or for its rings alone, [`build`](Self::build)).
///
/// ```
/// use iocomplete::{RingBuilder, RingSet};
/// let rings = RingSet::builder().rings(3).ring(RingBuilder::default().entries(64)).build()?;
/// assert_eq!(rings.len(), 3);
/// # Ok::<(), iocomplete::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RingSetBuilder {
    rings: usize,
    ring: RingBuilder,
    pin: bool,
}

impl Default for RingSetBuilder {
    fn default() -> Self {
        RingSetBuilder {
            rings: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ring: RingBuilder::default(),
            pin: false,
        }
    }
}

impl RingSetBuilder {
    /// How many rings (default: one per CPU this process may run on; 1 to 1024).
    pub fn rings(mut self, n: usize) -> Self {
        self.rings = n;
        self
    }

    /// The settings of every ring (default [`RingBuilder::default`]). With
    /// [`RingBuilder::sqpoll`], the rings share the first ring's kernel submission thread
    /// (`IORING_SETUP_ATTACH_WQ`) instead of starting one each. Without SQPOLL there is
    /// nothing to share: since Linux 5.12 io_uring's async workers belong to the thread
    /// that submits, so each ring's thread has its own.
    pub fn ring(mut self, settings: RingBuilder) -> Self {
        self.ring = settings;
        self
    }

    /// [`spawn`](Self::spawn): pin ring `i`'s thread to the `i`-th CPU this process may
    /// run on (round robin when there are more rings than CPUs). Default off.
    pub fn pin(mut self, on: bool) -> Self {
        self.pin = on;
        self
    }

    /// The rings, for threads of your own (move each to the thread that drives it; take
    /// their [`handle`](Ring::handle)s first to reach one from another).
    ///
    /// Errors: [`ErrorKind::OutOfRange`](crate::ErrorKind::OutOfRange) for a count out of
    /// range, and whatever [`RingBuilder::build`] returns for a ring (the rings built
    /// before it are dropped).
    pub fn build(self) -> Result<Vec<Ring>> {
        if self.rings == 0 || self.rings > MAX_RINGS {
            return Err(Error::out_of_range("rings in a set", 1, MAX_RINGS as u64));
        }
        let first = self.ring.clone().build()?;
        // The kernel reads the descriptor during `io_uring_setup`; `first` keeps it open
        // until every ring is built.
        let attach = first.capabilities().sqpoll.then(|| first.as_raw_fd());
        let mut rings = Vec::with_capacity(self.rings);
        rings.push(first);
        for _ in 1..self.rings {
            let mut b = self.ring.clone();
            b.attach_wq = attach;
            rings.push(b.build()?);
        }
        Ok(rings)
    }

    /// Build the rings and drive each on a thread of its own (named `iocomplete-ring-N`,
    /// pinned if [`pin`](Self::pin) says so) until the set is shut down. Reach them
    /// through [`RingSet::handles`]: submit, register, and [`post`](RingHandle::post)
    /// messages that run on a ring's thread with the ring — from which
    /// [`Ring::post`] and [`Ring::submit_on`] reach the others.
    ///
    /// Errors: those of [`build`](Self::build); a thread that cannot be started or
    /// pinned (the rings already running are shut down first).
    pub fn spawn(self) -> Result<RingSet> {
        let pin = self.pin;
        let rings = self.build()?;
        let cpus = if pin { allowed_cpus()? } else { Vec::new() };
        let mut set = RingSet {
            handles: Vec::with_capacity(rings.len()),
            drivers: Vec::with_capacity(rings.len()),
        };
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        for (i, mut ring) in rings.into_iter().enumerate() {
            set.handles.push(ring.handle()?);
            let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            let ready = ready_tx.clone();
            let driver = std::thread::Builder::new()
                .name(format!("iocomplete-ring-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = pin_to(cpu) {
                            let _ = ready.send(Err(e));
                            return Err(e);
                        }
                    }
                    let _ = ready.send(Ok(()));
                    drop(ready);
                    ring.drive_until_shutdown()
                })
                .map_err(|e| Error::from_io(&e))?;
            set.drivers.push(driver);
        }
        drop(ready_tx);
        for _ in 0..set.drivers.len() {
            // Every thread reports once before it drives (a thread that panicked instead
            // dropped its sender: the loop then ends early).
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e), // `set`'s drop shuts the others down
                Err(_) => break,
            }
        }
        Ok(set)
    }
}

/// Rings driven by threads of their own, one per worker (see [`RingSetBuilder::spawn`]):
/// the thread-per-core shape of a storage engine. Each ring keeps its own registered
/// targets and buffers, op table and completion routes; the set hands out their
/// handles, and shuts them down together.
///
/// Work reaches a ring through its [`RingHandle`] from any thread, and from another
/// ring's thread through [`Ring::post`] and [`Ring::submit_on`], which announce it with
/// an `IORING_OP_MSG_RING` doorbell. Every message and every operation completes exactly
/// once whichever ring shuts down first.
///
/// ```
/// use iocomplete::RingSet;
/// use std::sync::mpsc;
/// let set = RingSet::builder().rings(2).spawn()?;
/// let (tx, rx) = mpsc::channel();
/// for (i, h) in set.handles().iter().enumerate() {
///     let tx = tx.clone();
///     h.post(move |ring| tx.send((i, ring.is_ok())).unwrap());
/// }
/// let mut got: Vec<_> = rx.iter().take(2).collect();
/// got.sort();
/// assert_eq!(got, [(0, true), (1, true)]);
/// set.shutdown()?;
/// # Ok::<(), iocomplete::Error>(())
/// ```
pub struct RingSet {
    handles: Vec<RingHandle>,
    drivers: Vec<JoinHandle<Result<()>>>,
}

impl fmt::Debug for RingSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingSet")
            .field("rings", &self.handles.len())
            .finish()
    }
}

impl RingSet {
    /// A builder with the defaults.
    pub fn builder() -> RingSetBuilder {
        RingSetBuilder::default()
    }

    /// The rings' handles, in ring order.
    pub fn handles(&self) -> &[RingHandle] {
        &self.handles
    }

    /// How many rings.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never true for a set that was built (it has at least one ring).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Shut every ring down gracefully ([`RingHandle::shutdown`]: what was submitted and
    /// posted before runs to its end) and wait for their threads. Returns the first
    /// ring's error, if a driver failed; a driver thread's panic is resumed here, once
    /// every thread has been waited for. Called from a message running on one of the
    /// set's own rings, it waits for the others; that ring's own loop ends after the
    /// message returns.
    pub fn shutdown(mut self) -> Result<()> {
        self.handles.iter().for_each(RingHandle::shutdown);
        self.join()
    }

    /// Shut every ring down now ([`RingHandle::shutdown_now`]: operations in flight are
    /// cancelled, messages not yet run learn the ring is closed) and wait for their
    /// threads, as [`shutdown`](Self::shutdown).
    pub fn shutdown_now(mut self) -> Result<()> {
        self.handles.iter().for_each(RingHandle::shutdown_now);
        self.join()
    }

    /// Wait for every driver thread, resuming the first panic once all have ended.
    fn join(&mut self) -> Result<()> {
        match self.join_others() {
            (_, Some(panic)) => std::panic::resume_unwind(panic),
            (first, None) => first,
        }
    }

    /// Wait for every driver thread but the calling one (a set shut down or dropped from
    /// one of its own rings' messages cannot wait for itself: that ring's loop ends once
    /// the message returns, detached). Returns the first driver's error and the first
    /// panic.
    fn join_others(&mut self) -> (Result<()>, Option<Box<dyn std::any::Any + Send>>) {
        let me = std::thread::current().id();
        let mut first = Ok(());
        let mut panic = None;
        for d in self.drivers.drain(..).filter(|d| d.thread().id() != me) {
            match d.join() {
                Ok(r) => {
                    if first.is_ok() {
                        first = r;
                    }
                }
                Err(p) => {
                    panic.get_or_insert(p);
                }
            }
        }
        (first, panic)
    }
}

/// Dropping a set shuts it down now — as [`RingSet::shutdown_now`]: a read of an idle pipe
/// must not keep a drop waiting forever — and waits for its threads (but the calling one,
/// when dropped from one of its own rings' messages). Errors and panics of the drivers are
/// lost: call [`RingSet::shutdown`] or [`RingSet::shutdown_now`] to see them.
impl Drop for RingSet {
    fn drop(&mut self) {
        self.handles.iter().for_each(RingHandle::shutdown_now);
        // A driver's panic is not resumed here (it could abort a panicking thread).
        let _ = self.join_others();
    }
}

/// The CPUs the calling thread may run on, in order.
fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu set of the size passed; 0 is this thread.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Err(Error::last_os());
    }
    // SAFETY: `CPU_ISSET` reads `set` at an index below `CPU_SETSIZE`.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    Ok(cpus)
}

/// Pin the calling thread to `cpu` (one `allowed_cpus` gave).
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE (it came from `allowed_cpus`).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu set of the size passed; 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(Error::last_os());
    }
    Ok(())
}
