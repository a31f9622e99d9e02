//! The io_uring driver.
//!
//! A [`Ring`] owns one io_uring instance, an op table (a `slab` of entries addressed by
//! generation-checked [`OpId`]s), the targets (file descriptors) registered with it, and
//! the buffer pools registered with it as fixed buffers. It batches submissions (one
//! `io_uring_enter` for everything queued since the last one), reaps completions in
//! batches, flushes the kernel's CQ overflow list so no completion is lost however many
//! operations are in flight, and routes each completion exactly once.
//!
//! Where io_uring is refused (a seccomp profile, `kernel.io_uring_disabled`, an old
//! kernel), a ring built with the default [`BackendKind::Auto`] runs on a pool of threads
//! instead, which executes the same submissions with `preadv2`, `pwritev2`, `poll` and
//! `fsync`: the same operations, completions, routes, cancels and deadlines, without the
//! io_uring-only features ([`Capabilities`] says which). [`Ring::backend`] tells which one
//! a ring got; [`RingBuilder::backend`] and the `IOCOMPLETE_BACKEND` environment variable
//! choose.
//!
//! One ring per thread: a `Ring` is `Send` (move it to the thread that will drive it) but
//! not `Sync`. Other threads submit through a [`RingHandle`]. A [`RingSet`] runs one ring
//! per worker thread; a message ([`RingHandle::post`], [`Ring::post`]) runs on a ring's
//! thread with the ring, and [`Ring::submit_on`] hands an operation to another ring and
//! brings its completion home.
//!
//! The kernel owns an operation's buffers from submission until its completion is reaped.
//! The op table holds them until then — whatever happens to the ticket, future or
//! routine that was waiting for it, and even when the operation is cancelled.
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
//! | [`Submission::to_queue`] | a [`CompletionQueue`](crate::CompletionQueue) that any thread consumes |
//! | [`Submission::to_ring`] + [`Ring::pop_completion`] | the ring's own FIFO, read by the thread driving it (no atomics: the cheapest route) |
//! | [`Submission::future`] | an [`OpFuture`] that any executor can `.await` |
//! | [`Submission::detach`] | nobody: send and forget; buffers are still reclaimed |
//!
//! An invalid request (misaligned direct I/O, zero length, a buffer too small, a closed
//! target, a wrong-kind target) completes the same way, with a typed error, without a
//! syscall. A dropped [`Ticket`] or [`OpFuture`] does not free anything early: the ring
//! parks the operation's buffers until the kernel's completion arrives. Dropping an
//! [`OpFuture`] also cancels its operation (see [`OpFuture`]); a dropped [`Ticket`] lets
//! it run to its end.
//!
//! Who drives the ring: the thread that owns it ([`Ring::run_once`] and friends, the
//! drivers' [`Driver::run`]), a thread of its own ([`Ring::spawn`]), a tokio task
//! (`iocomplete::tokio::spawn`, feature `tokio`), or any event loop that waits for the
//! ring's descriptor ([`AsFd`]) and calls [`Ring::poll_complete`]. Other threads and tasks
//! use it through a [`RingHandle`].

mod backend;
mod buf_ring;
mod completion;
mod driver;
mod handle;
mod mesh;
mod op;
mod port;
mod probe;
mod provided;
mod set;
mod signal;
mod submission;
mod submit;
mod target;
#[cfg(feature = "tokio")]
pub mod tokio;

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::IoUring;
use slab::Slab;

use crate::buf::{BufferPool, PoolInner};
use crate::error::{Error, ErrorKind, Result};

use backend::{Backend, Threads};
pub use backend::{BackendKind, BACKEND_ENV};
pub use buf_ring::BufRing;
pub(crate) use buf_ring::BufRingLease;
pub use completion::{Bufs, Completion, OpFuture};
pub use handle::RingHandle;
pub use mesh::HandOff;
pub(crate) use op::kernel_deadline;
pub use op::{BufPart, Op, OpId};
pub use port::Driver;
pub(crate) use port::{Done, Port, PortEvent};
pub use probe::Capabilities;
pub use set::{RingSet, RingSetBuilder};
pub use submission::{Submission, Ticket};
pub(crate) use target::{addressable, storage_of};
pub use target::{
    block_device_limits, default_max_chunk, BlockLimits, Direction, FdInfo, FdKind, Target,
    MAX_TRANSFER,
};

use buf_ring::BufRingState;
use completion::Delivery;
use handle::HandleShared;
use target::TargetEntry;

/// How long a driver loop ([`Ring::drive_until_shutdown`]) spins after its last work
/// before it blocks in the kernel: twice what waking a thread blocked there took on this
/// VM (see `Ring::spin_while_busy`).
const DRIVER_SPIN: Duration = Duration::from_micros(50);

/// Largest op-table reservation [`RingBuilder::ops`] accepts (about 1 GiB of entries).
const MAX_OPS_RESERVED: usize = 1 << 24;

/// Most SQ entries a ring takes (`IORING_MAX_ENTRIES`).
const MAX_ENTRIES: u32 = 32768;

/// CQEs copied out of the CQ at a time (see [`Ring::reap`]).
const CQE_BATCH: usize = 64;

static NEXT_RING_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// Builder for a [`Ring`].
///
/// ```
/// let ring = iocomplete::Ring::builder().entries(64).cq_entries(256).build()?;
/// assert!(ring.capabilities().cq_entries >= 256);
/// # Ok::<(), iocomplete::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RingBuilder {
    entries: u32,
    cq_entries: Option<u32>,
    sqpoll_idle: Option<u32>,
    single_issuer: bool,
    defer_taskrun: bool,
    files: u32,
    buffers: u32,
    ops: usize,
    backend: BackendKind,
    threads: Option<usize>,
    /// `IORING_SETUP_ATTACH_WQ` to this io_uring descriptor (set by [`RingSetBuilder`] while
    /// the ring it names is alive; only with SQPOLL, see there).
    attach_wq: Option<std::os::fd::RawFd>,
}

impl Default for RingBuilder {
    fn default() -> Self {
        RingBuilder {
            entries: 256,
            cq_entries: None,
            sqpoll_idle: None,
            single_issuer: false,
            defer_taskrun: false,
            files: 64,
            buffers: 64,
            ops: 1024,
            backend: BackendKind::Auto,
            threads: None,
            attach_wq: None,
        }
    }
}

impl RingBuilder {
    /// Submission queue entries (default 256; 1 to 32768): raised to 2 if smaller, so
    /// an operation and its linked deadline always fit together; rounded up to a power of
    /// two by the kernel.
    pub fn entries(mut self, n: u32) -> Self {
        self.entries = n;
        self
    }

    /// Completion queue entries (default: twice `entries`; raised to `entries` if smaller,
    /// which the kernel requires). A CQ smaller than the number of operations in flight is
    /// fine: the overflow is flushed, nothing is lost.
    pub fn cq_entries(mut self, n: u32) -> Self {
        self.cq_entries = Some(n);
        self
    }

    /// Use a kernel submission thread (`IORING_SETUP_SQPOLL`) idling after `idle_ms`.
    pub fn sqpoll(mut self, idle_ms: u32) -> Self {
        self.sqpoll_idle = Some(idle_ms);
        self
    }

    /// `IORING_SETUP_SINGLE_ISSUER` (Linux 6.0): only the thread that first drives the
    /// ring may submit. The ring is created disabled and enabled by the first drive, so it
    /// may be built on one thread and moved to another.
    ///
    /// Drop it on that thread too (or once nothing is in flight): dropped elsewhere, it
    /// can neither cancel nor wait for its operations, so each one still in flight
    /// completes at once with [`ErrorKind::Abandoned`] and its buffers are leaked (the
    /// kernel may still write them). With tokio, this means dropping the runtime on the
    /// thread that ran it.
    pub fn single_issuer(mut self, on: bool) -> Self {
        self.single_issuer = on;
        self
    }

    /// `IORING_SETUP_DEFER_TASKRUN` (Linux 6.1, implies single issuer): completion work
    /// runs only when the ring is driven, batching it.
    pub fn defer_taskrun(mut self, on: bool) -> Self {
        self.defer_taskrun = on;
        self
    }

    /// Size of the registered-file table (default 64; 0 disables fixed files).
    pub fn files(mut self, n: u32) -> Self {
        self.files = n;
        self
    }

    /// Size of the registered-buffer table, in regions (default 64; 0 disables).
    pub fn buffers(mut self, n: u32) -> Self {
        self.buffers = n;
        self
    }

    /// Op-table capacity reserved up front (default 1024; at most 2^24). The table grows
    /// past it if needed; reserving enough keeps steady-state I/O free of allocations.
    pub fn ops(mut self, n: usize) -> Self {
        self.ops = n;
        self
    }

    /// Which backend executes the ring's operations (default [`BackendKind::Auto`]:
    /// io_uring, or the thread pool where io_uring is refused; the `IOCOMPLETE_BACKEND`
    /// environment variable decides when it is set). Forcing [`BackendKind::Uring`] or
    /// [`BackendKind::Threads`] here ignores the environment.
    ///
    /// ```
    /// use iocomplete::{BackendKind, Op, Ring};
    /// let mut ring = Ring::builder().backend(BackendKind::Threads).build()?;
    /// assert_eq!(ring.backend(), BackendKind::Threads);
    /// assert!(!ring.capabilities().read_multishot);
    /// assert!(ring.submit(Op::nop()).wait()?.is_ok());
    /// # Ok::<(), iocomplete::Error>(())
    /// ```
    pub fn backend(mut self, kind: BackendKind) -> Self {
        self.backend = kind;
        self
    }

    /// With the thread-pool backend: the most threads running file I/O — positional
    /// reads and writes of files and block devices the page cache cannot serve at
    /// submission, `fsync` — at once (1 to 1024; by default 4 per CPU, at most the SQ
    /// entries: the bound io_uring puts on its own workers). They start as work arrives
    /// and stay until the ring is dropped. Operations that may wait for another party —
    /// reads and writes of pipes, sockets and ttys, readiness polls — each get a thread of
    /// their own while they wait (idle ones retire after 10 s), so blocked streams never
    /// hold up file I/O, nor each other; one more thread runs timers. Ignored by io_uring
    /// rings.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// Create the ring, with the backend [`backend`](Self::backend) chose.
    ///
    /// Errors: [`ErrorKind::Unsupported`] `{ feature: "io_uring" }` when io_uring is
    /// forced ([`BackendKind::Uring`], or `IOCOMPLETE_BACKEND=uring`) and the kernel has
    /// none or refuses it (a seccomp policy, `kernel.io_uring_disabled`);
    /// [`ErrorKind::InvalidInput`] for an `IOCOMPLETE_BACKEND` other than `threads`,
    /// `uring` or `auto`; [`ErrorKind::OutOfRange`] for settings out of their range.
    pub fn build(self) -> Result<Ring> {
        if self.entries == 0 || self.entries > MAX_ENTRIES {
            return Err(Error::out_of_range("ring entries", 1, MAX_ENTRIES.into()));
        }
        let entries = self.entries.max(2);
        if self.ops > MAX_OPS_RESERVED {
            return Err(Error::out_of_range(
                "op-table reservation",
                0,
                MAX_OPS_RESERVED as u64,
            ));
        }
        if self
            .threads
            .is_some_and(|n| n == 0 || n > backend::threads::MAX_WORKERS)
        {
            return Err(Error::out_of_range(
                "backend threads",
                1,
                backend::threads::MAX_WORKERS as u64,
            ));
        }
        let kind = match self.backend {
            BackendKind::Auto => BackendKind::from_env()?.unwrap_or(BackendKind::Auto),
            forced => forced,
        };
        match kind {
            BackendKind::Threads => self.build_threads(entries),
            BackendKind::Uring => self.build_uring(entries),
            BackendKind::Auto => match self.clone().build_uring(entries) {
                Err(e)
                    if e.kind()
                        == (ErrorKind::Unsupported {
                            feature: "io_uring",
                        }) =>
                {
                    self.build_threads(entries)
                }
                r => r,
            },
        }
    }

    /// The thread-pool ring.
    fn build_threads(self, entries: u32) -> Result<Ring> {
        // Clamped as io_uring's `IORING_SETUP_CLAMP` does (`IORING_MAX_CQ_ENTRIES`).
        let cq = self
            .cq_entries
            .unwrap_or(entries * 2)
            .clamp(entries, 2 * MAX_ENTRIES);
        let caps = Capabilities::threads(entries, cq);
        let workers = self.threads.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            cpus.saturating_mul(4).min(entries as usize)
        });
        let ops = self.ops.max(entries as usize);
        let threads = Threads::new(workers, ops, cq as usize)?;
        self.finish(Backend::Threads(threads), caps, true)
    }

    /// The io_uring ring.
    fn build_uring(self, entries: u32) -> Result<Ring> {
        let mut b = IoUring::builder();
        b.setup_cqsize(self.cq_entries.unwrap_or(entries * 2).max(entries));
        b.setup_clamp();
        if let Some(idle) = self.sqpoll_idle {
            b.setup_sqpoll(idle);
            if let Some(fd) = self.attach_wq {
                b.setup_attach_wq(fd);
            }
        }
        let single = self.single_issuer || self.defer_taskrun;
        if single {
            b.setup_single_issuer();
            b.setup_r_disabled();
        }
        if self.defer_taskrun {
            b.setup_defer_taskrun();
        }
        let uring = b.build(entries).map_err(|e| match e.raw_os_error() {
            errno if BackendKind::refused(errno) => Error::unsupported("io_uring"),
            Some(libc::EINVAL) if single => Error::unsupported("IORING_SETUP_SINGLE_ISSUER"),
            _ => Error::from_io(&e),
        })?;
        let mut caps = Capabilities::probe(&uring);
        caps.defer_taskrun = self.defer_taskrun;
        if self.files > 0 {
            caps.fixed_files = uring.submitter().register_files_sparse(self.files).is_ok();
        }
        if self.buffers > 0 {
            caps.fixed_buffers = caps.read_fixed
                && uring
                    .submitter()
                    .register_buffers_sparse(self.buffers)
                    .is_ok();
        }
        self.finish(Backend::Uring(uring), caps, !single)
    }

    /// The ring around its backend.
    fn finish(self, backend: Backend, caps: Capabilities, enabled: bool) -> Result<Ring> {
        let id = NEXT_RING_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shared = Arc::new(HandleShared::new(id)?);
        if let (Backend::Uring(uring), true) = (&backend, caps.msg_ring) {
            // Without it (no descriptor left), other rings wake this one by its eventfd.
            shared.set_doorbell(uring.as_fd().try_clone_to_owned().ok());
        }
        // The thread-pool backend also puts there what it completes on the ring's thread
        // when the ring enters: room for an operation table's worth, so that steady-state
        // I/O does not grow it.
        let cqes_room = match backend {
            Backend::Threads(_) => CQE_BATCH + self.ops.min(1 << 14),
            Backend::Uring(_) => CQE_BATCH,
        };
        Ok(Ring {
            backend,
            id,
            ops: Slab::with_capacity(self.ops),
            next_gen: 0,
            targets: Vec::new(),
            files: self.files,
            pools: Vec::new(),
            buf_rings: Vec::new(),
            next_bgid: 0,
            buffer_slots: if caps.fixed_buffers { self.buffers } else { 0 },
            next_buffer: 0,
            caps,
            in_kernel: 0,
            ready: VecDeque::new(),
            abandoned: Arc::new(crossbeam_queue::SegQueue::new()),
            shared,
            doorbells: Slab::new(),
            wake_armed: false,
            inbox_visits: 0,
            inbox_again: false,
            cancelling_all: false,
            enabled,
            issuer: 0,
            stats: RingStats::default(),
            spare_iovs: SpareIovs::default(),
            cqes: VecDeque::with_capacity(cqes_room),
        })
    }
}

/// Counters kept by a ring, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Operations accepted by `submit` (valid or not).
    pub submitted: u64,
    /// Completions produced (each operation exactly once).
    pub completed: u64,
    /// Of those, operations rejected before reaching the kernel.
    pub rejected: u64,
    /// `io_uring_enter` calls made.
    pub enters: u64,
    /// Times the kernel's CQ overflow list had to be flushed.
    pub overflow_flushes: u64,
    /// CQEs whose `user_data` matched no live operation (should stay 0).
    pub stale_cqes: u64,
    /// `IORING_OP_MSG_RING` doorbells this ring sent ([`Ring::post`],
    /// [`Ring::submit_on`]) that reached their ring. A doorbell that failed was replaced
    /// by a write to the target's eventfd and is not counted.
    pub doorbells: u64,
    /// Messages run on this ring ([`RingHandle::post`], [`Ring::post`], the legs of
    /// [`Ring::submit_on`]); those refused because the ring was closing are not counted.
    pub messages: u64,
}

/// How a pool's buffers are used with this ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferRegistration {
    /// Registered: operations on its buffers use the `*_FIXED` opcodes.
    Fixed,
    /// Not registered (no room, no kernel support, or the registration failed, e.g.
    /// `RLIMIT_MEMLOCK`): operations use the plain opcodes, with the same results.
    Unregistered(Error),
}

#[derive(Debug)]
struct RegisteredPool {
    pool: crate::sync::Arc<PoolInner>,
    /// Index of the pool's first region in the kernel's buffer table.
    base: u32,
}

/// What an op-table entry is waiting for.
enum EntryState {
    /// The kernel owns the operation; its completion goes to this delivery.
    InKernel(Delivery),
    /// Completed, kept for [`Ring::wait`].
    Kept(Completion),
}

/// One operation in the op table.
struct Entry {
    gen: u32,
    tag: u64,
    state: EntryState,
    /// The buffers, parked here while the kernel owns them.
    bufs: Bufs,
    /// Requested lengths of a vectored read's buffers, to distribute the result.
    iov: Vec<libc::iovec>,
    /// The linked timeout's value; boxed so its address is stable until submission.
    timespec: Option<Box<io_uring::types::Timespec>>,
    cancel_requested: bool,
    has_deadline: bool,
    /// The op reads into its buffers (their lengths are set from the result).
    is_read: bool,
    /// Bytes already in a single read buffer before the read (`Op::read_append`); the
    /// buffer's length on success is this plus the result.
    read_base: usize,
    /// A multishot read from this buffer group: many CQEs, one per received buffer.
    multishot: Option<u16>,
}

// SAFETY: `iov` holds raw pointers into pool slots that this entry's `bufs` own; they are
// only read by the kernel and by the ring thread that owns the entry.
unsafe impl Send for Entry {}

/// Emptied iovec arrays of finished vectored operations, reused by the next ones so a
/// steady stream of `readv`/`writev` allocates nothing.
#[derive(Default)]
struct SpareIovs(Vec<Vec<libc::iovec>>);

// SAFETY: every array kept here is empty (`len() == 0`): it holds no pointer, only an
// allocation owned by the vector.
unsafe impl Send for SpareIovs {}

impl SpareIovs {
    /// Arrays kept at most; beyond that a finished op's array is freed.
    const KEEP: usize = 64;

    fn take(&mut self, n: usize) -> Vec<libc::iovec> {
        let mut v = self.0.pop().unwrap_or_default();
        v.reserve(n);
        v
    }

    fn give(&mut self, mut v: Vec<libc::iovec>) {
        if v.capacity() > 0 && self.0.len() < Self::KEEP {
            v.clear();
            self.0.push(v);
        }
    }
}

/// An io_uring instance (or the thread pool standing in for it, see [`BackendKind`]) with
/// its op table, targets and registered pools.
///
/// ```
/// use iocomplete::{BufferPool, Op, Ring};
/// use std::io::Write;
///
/// let mut f = tempfile::tempfile().unwrap();
/// f.write_all(b"hello, ring").unwrap();
/// let mut ring = Ring::builder().build()?;
/// let pool = BufferPool::builder().slots(4).slot_len(4096).header_len(8).build()?;
/// ring.register_pool(&pool);
/// let file = ring.register(f)?;
///
/// let done = ring.submit(Op::read(file, 0, pool.try_get()?)).wait()?;
/// let buf = done.into_result()?;
/// assert_eq!(buf.data(), b"hello, ring");
/// assert_eq!(buf.header().len(), 8); // header room in front, not counted in len()
/// # Ok::<(), iocomplete::Error>(())
/// ```
pub struct Ring {
    // Field order matters for drop: the backend (the io_uring instance) goes first, then
    // the pools whose arenas it had registered.
    backend: Backend,
    id: u32,
    ops: Slab<Entry>,
    next_gen: u32,
    /// Registered targets by index (indices and generations come from the shared
    /// `TargetIds`, so handles can register too).
    targets: Vec<Option<TargetEntry>>,
    files: u32,
    pools: Vec<RegisteredPool>,
    /// Provided-buffer rings; after `uring` so the kernel is gone before their memory.
    buf_rings: Vec<BufRingState>,
    next_bgid: u16,
    buffer_slots: u32,
    next_buffer: u32,
    caps: Capabilities,
    /// Operations submitted whose CQE has not been reaped.
    in_kernel: usize,
    /// Completions delivered with [`Submission::to_ring`], oldest first. Grows to the
    /// loop's depth once, then is reused.
    ready: VecDeque<Completion>,
    /// Ids of dropped tickets, pushed from any thread.
    abandoned: Arc<crossbeam_queue::SegQueue<OpId>>,
    shared: Arc<HandleShared>,
    /// `MSG_RING` doorbells this ring sent and has not reaped (see `mesh`): the target,
    /// to wake by its eventfd if the doorbell fails, and its descriptor, kept open until
    /// the kernel is done with it. Counted in `in_kernel`.
    doorbells: Slab<(Arc<HandleShared>, Arc<OwnedFd>)>,
    wake_armed: bool,
    /// Times this turn's CQEs (wake-ups, doorbells) sent the ring to its inbox; bounded
    /// by `INBOX_VISITS`, reset at each turn's housekeeping.
    inbox_visits: u32,
    /// The inbox still holds work the ring did not take this turn (see `start_inbox`):
    /// the next turn must come without waiting.
    inbox_again: bool,
    /// A handle called `shutdown_now`: operations sent from handles complete with
    /// `Cancelled` without starting.
    cancelling_all: bool,
    enabled: bool,
    /// Single issuer: the thread that enabled the ring (`driver::thread_token`); 0 before
    /// that, and for other rings.
    issuer: usize,
    stats: RingStats,
    spare_iovs: SpareIovs,
    /// CQEs copied out of the CQ (`user_data`, result, flags) and not routed yet, oldest
    /// first (see `reap`); with the thread-pool backend, also the completions of
    /// operations it does on the ring's thread when the ring enters (see `enter`).
    cqes: VecDeque<(u64, i32, u32)>,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("id", &self.id)
            .field("backend", &self.backend.kind())
            .field("in_kernel", &self.in_kernel)
            .field("ops", &self.ops.len())
            .field("caps", &self.caps)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// A builder with the defaults.
    pub fn builder() -> RingBuilder {
        RingBuilder::default()
    }

    /// A ring with the default settings.
    pub fn new() -> Result<Ring> {
        RingBuilder::default().build()
    }

    /// What the kernel and this ring can do.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Which backend executes this ring's operations: [`BackendKind::Uring`] or
    /// [`BackendKind::Threads`] (never `Auto`) — for a ring built with
    /// [`BackendKind::Auto`], whether io_uring was refused here and the thread pool took
    /// over. [`capabilities`](Self::capabilities) says what that backend lacks.
    pub fn backend(&self) -> BackendKind {
        self.backend.kind()
    }

    /// Counters.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Operations whose completion has not been produced yet (in the kernel).
    pub fn in_flight(&self) -> usize {
        self.in_kernel
    }

    /// Entries in the op table (in flight, plus completed ones kept for `wait`).
    pub fn pending(&self) -> usize {
        self.ops.len()
    }

    /// Register a file descriptor; the ring takes ownership of it (pass a `File`,
    /// `OwnedFd`, socket, ...; to keep yours, pass `fd.try_clone()`). Its kind, access
    /// mode and direct-I/O alignment are read now, once.
    pub fn register(&mut self, fd: impl Into<OwnedFd>) -> Result<Target> {
        let fd: OwnedFd = fd.into();
        let info = FdInfo::probe(fd.as_raw_fd())?;
        let target = HandleShared::new_target(&mut self.shared.ids(), self.id)?;
        self.install(handle::Registration { target, fd, info });
        Ok(target)
    }

    /// Put a registration in the table, as a fixed file where there is room.
    fn install(&mut self, r: handle::Registration) {
        let index = r.target.index;
        let mut fixed = None;
        if let (true, Backend::Uring(uring)) =
            (self.caps.fixed_files && index < self.files, &self.backend)
        {
            let fds = [r.fd.as_raw_fd()];
            if uring.submitter().register_files_update(index, &fds).is_ok() {
                fixed = Some(index);
            }
        }
        if let Backend::Threads(th) = &mut self.backend {
            let class = backend::threads::FdClass {
                stream: !r.info.kind.is_seekable(),
                direct: r.info.direct,
            };
            th.add_fd(r.fd.as_raw_fd(), class);
        }
        let ix = index as usize;
        if self.targets.len() <= ix {
            self.targets.resize_with(ix + 1, || None);
        }
        self.targets[ix] = Some(TargetEntry {
            gen: r.target.gen,
            fd: r.fd,
            info: r.info,
            fixed,
        });
    }

    /// Install the targets handles registered since the last call.
    pub(crate) fn install_registrations(&mut self) {
        if self.shared.has_registrations() {
            for r in self.shared.take_registrations() {
                self.install(r);
            }
        }
    }

    /// Register a duplicate of a borrowed descriptor (the caller keeps its own).
    ///
    /// The duplicate shares the open file, so flags the caller changes later
    /// (`fcntl(F_SETFL)`: `O_APPEND`, `O_NONBLOCK`, `O_DIRECT`) change it for the ring too,
    /// while the ring's facts ([`FdInfo`]) were read at registration. Positional writes
    /// stay positional regardless (`RWF_NOAPPEND`, Linux 6.9); for the rest, register again
    /// after changing flags.
    pub fn register_dup(&mut self, fd: impl AsFd) -> Result<Target> {
        let owned = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::from_io(&e))?;
        self.register(owned)
    }

    /// Facts about a registered target.
    pub fn info(&self, t: Target) -> Result<FdInfo> {
        match self.target(t) {
            Ok(e) => Ok(e.info),
            // Registered through a handle and not installed yet.
            Err(e) if t.ring == self.id && self.shared.has_registrations() => {
                let ids = self.shared.ids();
                let pending = ids.pending.iter().find(|r| r.target == t);
                pending.map(|r| r.info).ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Unregister a target and close the ring's descriptor. Operations already in flight
    /// finish normally (the kernel holds its own reference); later requests on `t`
    /// complete with [`ErrorKind::StaleTarget`].
    pub fn close(&mut self, t: Target) -> Result<()> {
        self.install_registrations();
        self.target(t)?;
        // Operations on `t` still queued in the SQ must reach the kernel before the
        // fixed-file slot is cleared, or they would find it empty (EBADF). With SQPOLL,
        // entering only wakes the kernel's submission thread: wait until it has taken
        // every entry (the kernel moves the SQ head once it has issued them, each holding
        // its file by then).
        self.enter(0, None)?;
        while self.caps.sqpoll && self.sq_len() > 0 {
            self.sq_wait()?;
            std::thread::yield_now();
        }
        if let Some(e) = self.targets[t.index as usize].take() {
            match &mut self.backend {
                Backend::Uring(uring) => {
                    if let Some(ix) = e.fixed {
                        let _ = uring.submitter().register_files_update(ix, &[-1]);
                    }
                }
                // Closed once the operations in flight on it are done.
                Backend::Threads(th) => th.release_fd(e.fd),
            }
        }
        self.shared.ids().release(t.index);
        Ok(())
    }

    /// Whether `t` was registered with this ring (it may have been closed since). Drivers
    /// check it before acting on their operations' ids, which only mean something to the
    /// ring that issued them.
    pub(crate) fn owns(&self, t: Target) -> bool {
        t.ring == self.id
    }

    /// Whether a read of `t` would find something right now (see
    /// `TargetEntry::readable_now`); `None` when that cannot be told (a stale target, or
    /// `poll(2)` failed). For drivers that must learn that a source ran dry where the
    /// kernel gives its reads no `RWF_NOWAIT` (a FIFO opened by path, a tty).
    pub(crate) fn readable_now(&self, t: Target) -> Option<bool> {
        self.target(t).ok()?.readable_now()
    }

    fn target(&self, t: Target) -> Result<&TargetEntry> {
        if t.ring != self.id {
            return Err(ErrorKind::StaleTarget.into());
        }
        match self.targets.get(t.index as usize).and_then(Option::as_ref) {
            Some(e) if e.gen == t.gen => Ok(e),
            _ => Err(ErrorKind::StaleTarget.into()),
        }
    }

    /// Register a pool's arena as fixed buffers, so reads and writes on its buffers use
    /// `READ_FIXED`/`WRITE_FIXED` (and `READV_FIXED` where the kernel has it). When that
    /// is impossible the pool still works, unregistered, and the result says why.
    pub fn register_pool(&mut self, pool: &BufferPool) -> BufferRegistration {
        if self.pools.iter().any(|p| p.pool.id() == pool.inner.id()) {
            return BufferRegistration::Fixed;
        }
        let uring = match &self.backend {
            Backend::Uring(uring) if self.caps.fixed_buffers => uring,
            Backend::Uring(_) => {
                return BufferRegistration::Unregistered(Error::unsupported(
                    "registered buffers (IORING_REGISTER_BUFFERS2 sparse table)",
                ))
            }
            Backend::Threads(_) => {
                return BufferRegistration::Unregistered(Error::unsupported(
                    "registered buffers (the threads backend has none)",
                ))
            }
        };
        let regions: Vec<libc::iovec> = pool
            .inner
            .regions()
            .map(|(addr, len)| libc::iovec {
                iov_base: addr.cast(),
                iov_len: len,
            })
            .collect();
        let n = regions.len() as u32;
        if self.next_buffer + n > self.buffer_slots {
            return BufferRegistration::Unregistered(Error::invalid(
                "ring's registered-buffer table is full (RingBuilder::buffers)",
            ));
        }
        // SAFETY: every iovec covers memory of the pool's arena, which stays mapped as
        // long as the ring holds the `Arc<PoolInner>` pushed below (dropped only after the
        // io_uring instance, see the field order of `Ring`).
        let r = unsafe {
            uring
                .submitter()
                .register_buffers_update(self.next_buffer, &regions, None)
        };
        match r {
            Ok(()) => {
                pool.inner.note_registered(true);
                self.pools.push(RegisteredPool {
                    pool: pool.inner.clone(),
                    base: self.next_buffer,
                });
                self.next_buffer += n;
                BufferRegistration::Fixed
            }
            Err(e) => BufferRegistration::Unregistered(Error::from_io(&e)),
        }
    }

    /// The op-table entry of `id`, if it is still that operation's (generation check).
    fn entry(&self, id: OpId) -> Option<&Entry> {
        if id.ring() != self.id {
            return None;
        }
        self.ops.get(id.index()).filter(|e| e.gen == id.gen())
    }

    /// Mutable [`entry`](Self::entry).
    fn entry_mut(&mut self, id: OpId) -> Option<&mut Entry> {
        if id.ring() != self.id {
            return None;
        }
        self.ops.get_mut(id.index()).filter(|e| e.gen == id.gen())
    }

    /// Take the oldest completion of the operations submitted with
    /// [`Submission::to_ring`] (in completion order), without driving the ring.
    ///
    /// ```
    /// # use iocomplete::{Op, Ring};
    /// let mut ring = Ring::new()?;
    /// ring.submit(Op::nop().tag(1)).to_ring();
    /// ring.submit(Op::nop().tag(2)).to_ring();
    /// ring.run_until_idle()?;
    /// let mut tags = Vec::new();
    /// while let Some(c) = ring.pop_completion() {
    ///     tags.push(c.tag());
    /// }
    /// tags.sort();
    /// assert_eq!(tags, [1, 2]);
    /// # Ok::<(), iocomplete::Error>(())
    /// ```
    pub fn pop_completion(&mut self) -> Option<Completion> {
        self.ready.pop_front()
    }

    /// Number of completions waiting for [`pop_completion`](Ring::pop_completion).
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Ask the kernel to cancel an operation (`IORING_OP_ASYNC_CANCEL`). It then
    /// completes — once, as always — with [`ErrorKind::Cancelled`], or with its normal
    /// result if it won the race. Returns false if the operation is not in flight.
    pub fn cancel(&mut self, id: OpId) -> bool {
        let Some(e) = self.entry_mut(id) else {
            return false;
        };
        if !matches!(e.state, EntryState::InKernel(_)) {
            return false;
        }
        e.cancel_requested = true;
        let sqe = io_uring::opcode::AsyncCancel::new(id.user_data())
            .build()
            .user_data(op::sentinel::CANCEL);
        self.push_sqes(&[sqe]).is_ok()
    }

    /// Submit what is queued and process the completions already available, without
    /// waiting. Returns the number of completions produced.
    pub fn poll(&mut self) -> Result<usize> {
        self.enable()?;
        let before = self.stats.completed;
        self.housekeeping();
        self.enter(0, None)?;
        self.reap();
        Ok((self.stats.completed - before) as usize)
    }

    /// Submit what is queued and wait (up to `timeout`, or until at least one completion
    /// if `None`) for completions, then process them. Returns the number produced.
    ///
    /// A turn that ran a message ([`RingHandle::post`], [`Ring::post`], either leg of
    /// [`Ring::submit_on`]) returns without waiting, even if nothing completed: the
    /// message may be what the caller waits for (a flag it sets, a hand-off's reply).
    pub fn run_once(&mut self, timeout: Option<Duration>) -> Result<usize> {
        self.enable()?;
        let before = self.stats.completed;
        let messages = self.stats.messages;
        self.housekeeping();
        self.reap();
        // Nothing ready yet: wait if anything can still arrive — an operation in flight, or
        // (with a timeout) a handle's submission signalled through the armed wake poll.
        let can_arrive = self.in_kernel > 0 || (self.wake_armed && timeout.is_some());
        let progress = self.stats.completed != before || self.stats.messages != messages;
        if !progress && can_arrive && !self.inbox_again {
            self.enter(1, timeout)?;
        } else {
            self.enter(0, None)?;
        }
        self.reap();
        Ok((self.stats.completed - before) as usize)
    }

    /// Like [`run_once`](Ring::run_once), but wait until at least `min` completions
    /// (capped at the number of operations in flight) are ready, or `timeout` passes:
    /// one `io_uring_enter` for the whole batch instead of one per wake-up. Deep queues
    /// on fast devices trade a little latency for fewer enters and wake-ups this way
    /// (fio's `iodepth_batch_complete_min`). Returns the number of completions produced.
    /// As `run_once`, it does not wait in a turn that ran a message.
    pub fn run_wait(&mut self, min: usize, timeout: Option<Duration>) -> Result<usize> {
        self.enable()?;
        let before = self.stats.completed;
        let messages = self.stats.messages;
        self.housekeeping();
        self.reap();
        let have = (self.stats.completed - before) as usize;
        let want = min.min(self.in_kernel).saturating_sub(have);
        if want > 0 && self.stats.messages == messages && !self.inbox_again {
            self.enter(want, timeout)?;
        } else {
            self.enter(0, None)?;
        }
        self.reap();
        Ok((self.stats.completed - before) as usize)
    }

    /// Drive the ring until no operation is in flight.
    pub fn run_until_idle(&mut self) -> Result<()> {
        self.housekeeping();
        while self.in_kernel > 0 {
            self.run_once(Some(Duration::from_millis(100)))?;
        }
        Ok(())
    }

    /// A handle through which other threads submit operations to this ring. The ring
    /// picks them up whenever it is driven (a handle's submission wakes a waiting ring).
    pub fn handle(&mut self) -> Result<RingHandle> {
        self.arm_wake()?;
        Ok(RingHandle::new(self.shared.clone()))
    }

    /// Move the ring to a new thread that drives it until [`RingHandle::shutdown`] is
    /// called and everything submitted has completed. Returns a handle for submitting.
    pub fn spawn(mut self) -> Result<(RingHandle, std::thread::JoinHandle<Result<()>>)> {
        let h = self.handle()?;
        let t = std::thread::Builder::new()
            .name("iocomplete-ring".into())
            .spawn(move || self.drive_until_shutdown())
            .map_err(|e| Error::from_io(&e))?;
        Ok((h, t))
    }

    /// Drive until a handle calls [`RingHandle::shutdown`] and all work is done.
    ///
    /// A thread that does nothing else: after its last work it spins (yielding now and
    /// then) for 50 µs before it blocks in the kernel, and while it spins, requests from
    /// handles and other rings reach it without waking it — a message between two rings
    /// driven this way takes about a microsecond instead of a thread wake-up each way.
    /// An idle ring costs nothing once it sleeps.
    pub fn drive_until_shutdown(&mut self) -> Result<()> {
        self.arm_wake()?;
        loop {
            self.spin_while_busy()?;
            if self.is_shut_down() {
                return Ok(());
            }
            self.run_once(Some(Duration::from_millis(50)))?;
            if self.is_shut_down() {
                return Ok(());
            }
        }
    }

    /// The driver loop's busy phase: take whatever is there — a request in the inbox, a
    /// CQE, an SQE to submit — with non-blocking turns, and when nothing is, spin (with a
    /// `yield` now and then) until [`DRIVER_SPIN`] has passed since the last work; then
    /// return, for the caller to block in the kernel. On this 2-vCPU VM a thread blocked in
    /// `io_uring_enter` takes ~25 µs to wake once its vCPU has gone idle: two rings
    /// exchanging messages with a shorter spin (crossbeam's `Backoff`, a few µs) fell into
    /// paying that on every message, for good — each woke after the other had gone to
    /// sleep (PERF.md "Cross-ring hand-off"). Only the dedicated driver loop spins;
    /// `run_once` and friends never do.
    ///
    /// While it spins the ring counts as awake: requests from handles and other rings
    /// skip their wake-up (no eventfd write, no `MSG_RING`); the ring looks at its queues
    /// again before any sleep (the handshake is `Signal::needs_wake`'s).
    fn spin_while_busy(&mut self) -> Result<()> {
        /// Ends "awake" however the loop is left — an error, a panic in a message — so that
        /// no later driver of this ring (a reactor's `poll_complete`) waits for wake-ups
        /// that requests skipped.
        struct Awake(Arc<signal::Signal>);
        impl Drop for Awake {
            fn drop(&mut self) {
                self.0.end_awake();
            }
        }
        let awake = Awake(self.shared.signal.clone());
        let signal = &awake.0;
        let mut idle_since = std::time::Instant::now();
        let mut spins = 0u32;
        loop {
            signal.set_awake();
            let work = self.has_requests()
                || !self.cqes.is_empty()
                || !self.backend_idle()
                || self.sq_len() > 0;
            if work {
                self.poll()?;
                if self.is_shut_down() {
                    return Ok(());
                }
                idle_since = std::time::Instant::now();
                continue;
            }
            if idle_since.elapsed() >= DRIVER_SPIN {
                // One last look, with requests waking the ring from now on.
                if signal.end_awake() && self.has_requests() {
                    continue;
                }
                return Ok(());
            }
            spins = spins.wrapping_add(1);
            if spins % 64 == 0 {
                // Let a thread that shares this CPU (pinned rings, more rings than CPUs)
                // run: it may be the one about to send work here.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// A handle asked for shutdown and nothing is left: no command waiting, nothing in
    /// flight.
    fn is_shut_down(&self) -> bool {
        self.shared.is_shut_down() && self.shared.inbox_is_empty() && self.in_kernel == 0
    }

    /// Drive the ring from an event loop: one turn that never blocks — start what handles
    /// sent, submit, and route the completions that are ready (at most
    /// [`POLL_BUDGET`](Self::POLL_BUDGET) of them, so one busy ring cannot starve the
    /// other tasks of its executor) — then say whether the ring is done.
    ///
    /// Returns `Ready(Ok(()))` once a handle has asked for [`RingHandle::shutdown`] and
    /// everything has completed; `Pending` otherwise. On `Pending`, call it again when
    /// the ring's descriptor ([`AsFd`]) polls readable — register that interest with
    /// your reactor; the descriptor becomes readable whenever a completion is waiting,
    /// including the wake-up of a handle's request — or at once if more than the budget
    /// was ready (the waker of `cx` has then been woken already).
    ///
    /// With the `tokio` feature, `iocomplete::tokio::drive` is this loop on tokio's
    /// reactor. A driver of another runtime follows the same shape:
    ///
    /// ```no_run
    /// # use std::task::{Context, Poll};
    /// # fn wait_readable(_: std::os::fd::BorrowedFd<'_>, _: &mut Context<'_>) -> Poll<()> { Poll::Pending }
    /// # fn turn(ring: &mut iocomplete::Ring, cx: &mut Context<'_>) -> Poll<iocomplete::Result<()>> {
    /// use std::os::fd::AsFd;
    /// loop {
    ///     if let Poll::Ready(done) = ring.poll_complete(cx) {
    ///         return Poll::Ready(done); // shut down (or the ring failed)
    ///     }
    ///     // The reactor's "readable" future for the ring's fd; Ready clears its readiness.
    ///     if wait_readable(ring.as_fd(), cx).is_pending() {
    ///         return Poll::Pending; // woken when a completion is waiting
    ///     }
    /// }
    /// # }
    /// ```
    pub fn poll_complete(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        use std::task::Poll;
        // A single-issuer ring refuses other threads before it takes anything from its
        // inbox: what handles sent stays there, to complete `Cancelled` at the ring's drop
        // rather than be stranded in a submission queue nobody may submit.
        if let Err(e) = self.enable().and_then(|()| self.arm_wake()) {
            return Poll::Ready(Err(e));
        }
        self.housekeeping();
        let mut routed = 0;
        loop {
            if let Err(e) = self.enter(0, None) {
                return Poll::Ready(Err(e));
            }
            routed += self.reap_up_to(Self::POLL_BUDGET - routed);
            if routed >= Self::POLL_BUDGET {
                // More may be ready, and the descriptor will not signal what was already
                // there: come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // Routing can queue new SQEs (a handle's wake-up CQE starts its operations):
            // submit them before sleeping, or nothing would ever complete them. (With
            // SQPOLL the kernel's thread takes them.)
            if self.caps.sqpoll || self.sq_len() == 0 {
                break;
            }
        }
        if self.is_shut_down() {
            return Poll::Ready(Ok(()));
        }
        if self.inbox_again {
            // The descriptor will not signal what is already in the inbox.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Most completions one [`poll_complete`](Self::poll_complete) routes.
    pub const POLL_BUDGET: usize = 256;
}

/// The io_uring instance's descriptor (with the thread-pool backend, an eventfd): it polls
/// readable while a completion is waiting in the ring (see [`Ring::poll_complete`]). Only
/// for readiness: reading or writing it does nothing useful.
///
/// Operations started on the ring's own thread (not through a [`RingHandle`]) are
/// submitted by the next turn of the ring — where io_uring completes at once what it can,
/// and so does the thread-pool backend — so call [`Ring::poll_complete`] after starting
/// them, before waiting for the descriptor.
///
/// With [`RingBuilder::defer_taskrun`], completions wait as task work that wakes only the
/// ring's own thread: `poll(2)` on that thread sees them, an edge-triggered `epoll`
/// (tokio's, mio's) does not — drive such a ring from a blocking loop instead.
impl AsFd for Ring {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.backend.as_fd()
    }
}

/// The descriptor of [`AsFd`], for reactors that take raw descriptors.
impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.backend.as_fd().as_raw_fd()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.shutdown_drain();
        // Other rings' doorbells from now on find no descriptor and write the eventfd,
        // which nobody reads either: what they announce was refused by the drain.
        self.shared.set_doorbell(None);
        if let Backend::Threads(th) = &mut self.backend {
            // Operations the drain gave up on may still use their descriptors: the backend
            // keeps those open until they return.
            for e in self.targets.iter_mut().filter_map(Option::take) {
                th.release_fd(e.fd);
            }
        }
        for p in &self.pools {
            p.pool.note_registered(false);
        }
    }
}
