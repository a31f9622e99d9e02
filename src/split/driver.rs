//! The split driver: a [`SplitMachine`] executed on a [`Ring`].

use std::fmt;
use std::time::Duration;

use super::machine::{ChildId, Mode, SplitAction, SplitEvent, SplitMachine, SplitOutcome};
use super::plan::TransferPlan;
use crate::buf::{BufferPool, PoolBuf};
use crate::error::{Error, ErrorKind, Result};
use crate::ring::{
    addressable, default_max_chunk, storage_of, Bufs, Direction, Done, Driver, Op, Port, PortEvent,
    Ring, Target, MAX_TRANSFER,
};

/// What a split request moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Read `len` bytes of `src` from `offset`; each chunk goes to
    /// [`SplitDriver::on_read`].
    Read {
        /// A file or block device open for reading.
        src: Target,
        /// Offset of the first byte.
        offset: u64,
        /// Bytes to read. To the end of `src`: its size from
        /// [`Ring::info`]`(src)?.size` — a block device's size (`BLKGETSIZE64`), which
        /// `std::fs::Metadata::len` is not (it is 0 for a device node).
        len: u64,
    },
    /// Write `len` bytes to `dst` from `offset`; each chunk is produced by
    /// [`SplitDriver::on_fill`].
    Write {
        /// A file or block device open for writing.
        dst: Target,
        /// Offset of the first byte.
        offset: u64,
        /// Bytes to write.
        len: u64,
    },
    /// Copy `len` bytes of `src` from `src_offset` to `dst` at `dst_offset`: each child
    /// reads its chunk into a pooled (registered) buffer and writes that same buffer — no
    /// copy in user space. End of file on `src` ends the copy early, successfully.
    ///
    /// `src` and `dst` may be the same storage only if the two ranges do not overlap:
    /// children run in any order, so an overlapping copy would read bytes another child
    /// already wrote. [`SplitDriver::new`] refuses it, recognising the same storage under
    /// any name: the same inode or block device whatever the paths or descriptors, a
    /// partition and its disk (at the partition's start), a loop device and its backing
    /// file (at the loop's offset) — through sysfs. Stacked devices sysfs does not map
    /// byte for byte (device-mapper, md) are compared as themselves only.
    Copy {
        /// A file or block device open for reading.
        src: Target,
        /// Offset of the first byte read.
        src_offset: u64,
        /// A file or block device open for writing.
        dst: Target,
        /// Offset of the first byte written.
        dst_offset: u64,
        /// Bytes to copy. All of `src`: its size from [`Ring::info`]`(src)?.size` (a
        /// block device's size, not `std::fs::Metadata::len`, which is 0 for one).
        len: u64,
    },
}

impl Job {
    fn len(&self) -> u64 {
        match *self {
            Job::Read { len, .. } | Job::Write { len, .. } | Job::Copy { len, .. } => len,
        }
    }

    /// The offset the machine plans with (the source's for a copy).
    fn offset(&self) -> u64 {
        match *self {
            Job::Read { offset, .. } | Job::Write { offset, .. } => offset,
            Job::Copy { src_offset, .. } => src_offset,
        }
    }

    /// The target every child's first operation goes to (a copy's source; both of a
    /// copy's targets are registered with the same ring, checked by `new`).
    fn target(&self) -> Target {
        match *self {
            Job::Read { src, .. } | Job::Copy { src, .. } => src,
            Job::Write { dst, .. } => dst,
        }
    }

    fn direction(&self) -> Direction {
        match self {
            Job::Write { .. } => Direction::Write,
            // A copy is read-driven: 0 bytes from the source is end of file.
            Job::Read { .. } | Job::Copy { .. } => Direction::Read,
        }
    }
}

/// How a split request runs: mode, chunk limits, deadline. Setters take values;
/// [`SplitDriver::new`] validates them against the targets and the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitConfig {
    mode: Mode,
    max_chunk: Option<u64>,
    boundary: u64,
    deadline: Option<Duration>,
}

impl SplitConfig {
    /// Defaults: [`Mode::Parallel`] with 4 children in flight, the chunk limit of the
    /// device (block devices) or of the pool's slots, no boundary, no deadline.
    pub const fn new() -> SplitConfig {
        SplitConfig {
            mode: Mode::Parallel { max_in_flight: 4 },
            max_chunk: None,
            boundary: 0,
            deadline: None,
        }
    }

    /// Serial (one child re-armed) or parallel children.
    pub const fn mode(mut self, mode: Mode) -> SplitConfig {
        self.mode = mode;
        self
    }

    /// Largest chunk in bytes. Without it: the smallest `max_sectors_kb` of the block
    /// devices involved ([`block_device_limits`](crate::ring::block_device_limits), read from
    /// sysfs at each [`SplitDriver::new`] — set a chunk when starting many small
    /// requests), or a pool slot for files. Always capped
    /// at a pool slot's capacity and at [`MAX_TRANSFER`], and
    /// rounded down to the direct-I/O alignment.
    pub const fn max_chunk(mut self, bytes: u64) -> SplitConfig {
        self.max_chunk = Some(bytes);
        self
    }

    /// No chunk crosses a device offset that is a multiple of `bytes` (0: none).
    pub const fn boundary(mut self, bytes: u64) -> SplitConfig {
        self.boundary = bytes;
        self
    }

    /// Complete the request with [`ErrorKind::TimedOut`] if it is not done within `d` of
    /// its first submission (one `IORING_OP_TIMEOUT` for the whole request; the children
    /// in flight are cancelled and drain first). A deadline no kernel timer can reach
    /// (about 292 years or more, e.g. `from_secs(i64::MAX)` or [`Duration::MAX`]) means no
    /// deadline.
    pub const fn deadline(mut self, d: Duration) -> SplitConfig {
        self.deadline = Some(d);
        self
    }
}

impl Default for SplitConfig {
    fn default() -> SplitConfig {
        SplitConfig::new()
    }
}

/// Counters of one split request, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitStats {
    /// Operations submitted to the ring for children (a copy child counts its read and its
    /// write).
    pub child_ops: u64,
    /// Child resubmissions after a short transfer.
    pub short_transfers: u64,
    /// Cancels sent for children in flight (after an error, a parent cancel or timeout).
    pub cancels: u64,
    /// Most children in flight at once.
    pub max_in_flight: usize,
}

/// Where one child slot stands in the driver (the machine tracks its chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Reading `len` bytes at machine offset `offset`.
    Reading {
        offset: u64,
        len: u64,
    },
    /// Writing `len` bytes (a write job's chunk, or a copy's second half).
    Writing {
        len: u64,
    },
}

/// One child: its buffer (reused for every chunk it carries — one buffer per child, not
/// per chunk), and the port key of the operation it has in flight.
#[derive(Debug)]
struct Child {
    /// The child's buffer while no operation holds it.
    buf: Option<PoolBuf>,
    phase: Phase,
    key: Option<usize>,
    /// The machine asked to cancel the current chunk.
    cancel: bool,
}

type OnRead = Box<dyn FnMut(u64, &PoolBuf) -> Result<()> + Send>;
type OnFill = Box<dyn FnMut(u64, &mut PoolBuf) -> Result<()> + Send>;
type OnProgress = Box<dyn FnMut(u64, u64) + Send>;

/// Runs one split request — a large read, write or copy cut into chunks by a
/// [`TransferPlan`] — on a [`Ring`], with the [`SplitMachine`] deciding and the ring
/// executing. A [`Driver`]: drive it with [`run`](Driver::run), [`step`](Driver::step) or
/// [`process`](Driver::process); its output is the request's [`SplitOutcome`].
///
/// - **Modes**: [`Mode::Serial`] re-arms one child for each chunk in turn; each child keeps
///   one pooled buffer for all its chunks (request reuse, no allocation per chunk).
///   [`Mode::Parallel`] keeps up to `max_in_flight` children in flight.
/// - **Zero copy**: a [`Job::Copy`] child reads into its buffer (`READ_FIXED` when the pool
///   is registered) and writes the same buffer (`WRITE_FIXED`).
/// - **Short transfers continue** from where they stopped; end of file on the source ends
///   the request successfully with fewer bytes.
/// - **First error wins**: the remaining children are cancelled ([`Ring::cancel`]); the
///   request completes once, with that error and the bytes done so far, and never before
///   its last child's completion came back.
/// - **Cancel** ([`cancel`](Driver::cancel)) cancels the children in flight; the request
///   then completes with [`ErrorKind::Cancelled`] once they are back.
/// - **Deadline** ([`SplitConfig::deadline`]): a kernel timer races the transfer and a
///   cancel, as events of the [`SplitMachine`]: the first path to set a status wins — a
///   child's error stands over a later cancel or timeout — and the request completes once
///   every child and the timer (fired, or cancelled once the children were back) are back.
/// - **Callbacks** ([`on_read`](Self::on_read), [`on_fill`](Self::on_fill),
///   [`on_progress`](Self::on_progress)): closures the driver calls as chunks move.
///
/// Completions reach the driver through its completion port; whoever drives the ring (the
/// driver's [`step`](Driver::step)/[`run`](Driver::run), or other code) fills it, and
/// [`process`](Driver::process) consumes it. Validation happens in [`new`](Self::new),
/// before anything reaches the kernel.
///
/// Dropping a driver before it completed abandons the request: the children in flight still
/// complete, and their buffers return to the pool when they do. An armed deadline timer
/// stays in the ring until it fires (the driver holds no handle to cancel it with): to end
/// everything early, [`cancel`](Driver::cancel) and drive the request to its completion.
///
/// ```
/// use iocomplete::split::{Job, Mode, SplitConfig, SplitDriver};
/// use iocomplete::{BufferPool, Driver, Ring};
/// use std::io::Write;
///
/// let mut src = tempfile::tempfile().unwrap();
/// src.write_all(&[5u8; 100_000]).unwrap();
/// let dst = tempfile::tempfile().unwrap();
/// let mut ring = Ring::new()?;
/// let pool = BufferPool::builder().slots(4).slot_len(16 * 1024).build()?;
/// ring.register_pool(&pool);
/// let (src, dst) = (ring.register(src)?, ring.register(dst)?);
/// let job = Job::Copy { src, src_offset: 0, dst, dst_offset: 0, len: 100_000 };
/// let config = SplitConfig::new().mode(Mode::Parallel { max_in_flight: 4 });
/// let done = SplitDriver::new(&mut ring, &pool, job, config)?.run(&mut ring)?;
/// assert_eq!((done.status, done.bytes), (Ok(()), 100_000));
/// assert_eq!(pool.stats().free, 4);
/// # Ok::<(), iocomplete::Error>(())
/// ```
pub struct SplitDriver {
    job: Job,
    machine: SplitMachine,
    /// The children's operations (keyed by child index) and the deadline timer.
    port: Port<u32>,
    children: Vec<Child>,
    outcome: Option<SplitOutcome>,
    /// The outcome was handed out by [`process`](Driver::process).
    delivered: bool,
    /// Direct-I/O alignment of the source (1 when buffered): a chunk resuming at an
    /// offset that is not a multiple of it follows a short read at end of file.
    src_align: u64,
    stats: SplitStats,
    on_read: Option<OnRead>,
    on_fill: Option<OnFill>,
    on_progress: Option<OnProgress>,
}

impl fmt::Debug for SplitDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitDriver")
            .field("job", &self.job)
            .field("plan", self.machine.plan())
            .field("mode", &self.machine.mode())
            .field("port", &self.port)
            .field("outcome", &self.outcome)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Facts the driver needs about one target.
fn target_info(ring: &Ring, t: Target, write: bool) -> Result<crate::FdInfo> {
    let info = ring.info(t)?;
    if !info.kind.is_seekable() {
        return Err(Error::wrong_kind("a file or block device", info.kind));
    }
    if write && !info.writable {
        return Err(Error::new(ErrorKind::NotWritable));
    }
    if write && info.append {
        // Its writes would land at the end of the file, in completion order.
        return Err(Error::new(ErrorKind::AppendOnly));
    }
    if !write && !info.readable {
        return Err(Error::new(ErrorKind::NotReadable));
    }
    Ok(info)
}

impl SplitDriver {
    /// Validate the request and take one pooled buffer per child that will run (an error
    /// if the pool has too few free). Nothing is submitted until the first
    /// [`process`](Driver::process) / [`step`](Driver::step) / [`run`](Driver::run).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::StaleTarget`] for a target not registered with `ring`;
    /// [`ErrorKind::WrongTargetKind`] for a target that is not a file or block device;
    /// [`ErrorKind::NotReadable`] / [`ErrorKind::NotWritable`] / [`ErrorKind::AppendOnly`]
    /// for one not open the right way (a destination opened `O_APPEND` ignores offsets);
    /// [`ErrorKind::OffsetOutOfRange`] for a range ending past the largest file offset
    /// (2⁶³ − 1); [`ErrorKind::InvalidInput`] for a copy between overlapping ranges of one
    /// file; [`ErrorKind::OutOfRange`] (and the plan's errors) for an impossible config;
    /// [`ErrorKind::Misaligned`] for a direct
    /// target and an offset, length or chunk that is not a multiple of its alignment (or a
    /// pool whose buffers are less aligned than it needs); [`ErrorKind::PoolExhausted`].
    pub fn new(
        ring: &mut Ring,
        pool: &BufferPool,
        job: Job,
        config: SplitConfig,
    ) -> Result<SplitDriver> {
        let infos: [Option<crate::FdInfo>; 2] = match job {
            Job::Read { src, .. } => [Some(target_info(ring, src, false)?), None],
            Job::Write { dst, .. } => [Some(target_info(ring, dst, true)?), None],
            Job::Copy { src, dst, .. } => [
                Some(target_info(ring, src, false)?),
                Some(target_info(ring, dst, true)?),
            ],
        };
        let geometry = pool.geometry();
        let mut align = 1u32;
        for info in infos.iter().flatten() {
            if info.direct {
                align = align.max(info.offset_align);
                if geometry.align < info.mem_align as usize {
                    return Err(Error::new(ErrorKind::Misaligned {
                        what: "buffer",
                        value: geometry.align as u64,
                        align: info.mem_align,
                    }));
                }
            }
        }
        // Only when no chunk is given: reading sysfs costs a few syscalls.
        let device_chunk = match config.max_chunk {
            Some(_) => None,
            None => default_max_chunk(infos.iter().flatten()),
        };
        if let Job::Copy { dst_offset, .. } = job {
            if dst_offset % u64::from(align) != 0 {
                return Err(Error::new(ErrorKind::Misaligned {
                    what: "offset",
                    value: dst_offset,
                    align,
                }));
            }
            if !addressable(dst_offset, job.len()) {
                return Err(Error::new(ErrorKind::OffsetOutOfRange {
                    offset: dst_offset,
                    len: job.len(),
                }));
            }
        }
        let capacity = geometry.capacity as u64;
        let wanted = config.max_chunk.or(device_chunk).unwrap_or(capacity);
        if wanted == 0 {
            return Err(Error::out_of_range("max chunk", 1, u64::MAX));
        }
        if config.max_chunk.is_some_and(|c| c % u64::from(align) != 0) {
            return Err(Error::new(ErrorKind::Misaligned {
                what: "chunk",
                value: wanted,
                align,
            }));
        }
        let plan = TransferPlan::builder()
            .max_chunk(wanted.min(capacity).min(MAX_TRANSFER))
            .boundary(config.boundary)
            .align(align)
            .build()?;
        let machine = SplitMachine::new(
            plan,
            config.mode,
            job.direction(),
            job.offset(),
            job.len(),
            config.deadline,
        )?;
        if !addressable(job.offset(), job.len()) {
            return Err(Error::new(ErrorKind::OffsetOutOfRange {
                offset: job.offset(),
                len: job.len(),
            }));
        }
        if let (
            Job::Copy {
                src_offset,
                dst_offset,
                len,
                ..
            },
            [Some(s), Some(d)],
        ) = (job, infos)
        {
            // The same storage under any name: the same inode or device, a partition and
            // its disk, a loop device and its backing file (resolved through sysfs).
            let (ss, sb) = storage_of(&s);
            let (ds, db) = storage_of(&d);
            // In u128: base + offset + len cannot overflow there.
            let (s0, d0) = (
                u128::from(sb) + u128::from(src_offset),
                u128::from(db) + u128::from(dst_offset),
            );
            let n = u128::from(len);
            let overlap = s0 < d0 + n && d0 < s0 + n;
            if overlap && (ss == ds || s.same_file(&d)) {
                return Err(Error::invalid(
                    "split: copy source and destination are the same storage and the ranges overlap",
                ));
            }
        }
        let slots = match config.mode {
            Mode::Serial => 1,
            Mode::Parallel { max_in_flight } => max_in_flight as usize,
        };
        // Children that will ever run: slot ids are armed in order, and only as many as
        // there are chunks.
        let used = plan.chunks(job.offset(), job.len())?.take(slots).count();
        let mut children = Vec::with_capacity(used);
        for _ in 0..used {
            children.push(Child {
                buf: Some(pool.try_get()?),
                phase: Phase::Idle,
                key: None,
                cancel: false,
            });
        }
        let src_align = match (job, infos[0]) {
            (Job::Read { .. } | Job::Copy { .. }, Some(i)) if i.direct => u64::from(i.offset_align),
            _ => 1,
        };
        Ok(SplitDriver {
            job,
            machine,
            port: Port::new(used),
            children,
            outcome: None,
            delivered: false,
            src_align,
            stats: SplitStats::default(),
            on_read: None,
            on_fill: None,
            on_progress: None,
        })
    }

    /// Call `f(offset, &buf)` with every chunk a read child (of a [`Job::Read`], or the
    /// read half of a [`Job::Copy`]) received: `buf.len()` bytes from source offset
    /// `offset`. The buffer is reused after the call; copy out what you keep. An error
    /// fails the child, and so the request.
    #[must_use]
    pub fn on_read(
        mut self,
        f: impl FnMut(u64, &PoolBuf) -> Result<()> + Send + 'static,
    ) -> SplitDriver {
        self.on_read = Some(Box::new(f));
        self
    }

    /// Call `f(offset, &mut buf)` to fill `buf.data_mut()` (exactly `buf.len()` bytes)
    /// with the bytes that belong at device offset `offset` of a [`Job::Write`]. After a
    /// short write the rest of a chunk is asked for again, so the same offset must always
    /// give the same bytes. An error fails the child, and so the request. A write job
    /// without it fails its children before they reach the kernel.
    #[must_use]
    pub fn on_fill(
        mut self,
        f: impl FnMut(u64, &mut PoolBuf) -> Result<()> + Send + 'static,
    ) -> SplitDriver {
        self.on_fill = Some(Box::new(f));
        self
    }

    /// Call `f(done, len)` after every child completion that moved bytes: `done` of the
    /// request's `len` bytes have moved (written, for writes and copies).
    #[must_use]
    pub fn on_progress(mut self, f: impl FnMut(u64, u64) + Send + 'static) -> SplitDriver {
        self.on_progress = Some(Box::new(f));
        self
    }

    /// The plan the request is cut with (after defaults and caps).
    pub fn plan(&self) -> &TransferPlan {
        self.machine.plan()
    }

    /// The job.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// Counters.
    pub fn stats(&self) -> SplitStats {
        self.stats
    }

    /// Ring operations of this request in flight (children, and the timer).
    pub fn in_flight(&self) -> usize {
        self.port.in_flight() + usize::from(self.port.timer_pending())
    }

    /// Bytes moved so far by the children (written, for writes and copies).
    pub fn bytes_transferred(&self) -> u64 {
        self.machine.bytes_transferred()
    }

    /// The request's outcome, once it completed.
    pub fn outcome(&self) -> Option<SplitOutcome> {
        self.outcome
    }

    /// True once the request completed.
    pub fn is_complete(&self) -> bool {
        self.outcome.is_some()
    }

    /// Carry out the machine's actions.
    fn pump(&mut self, ring: &mut Ring) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                SplitAction::ArmTimer(d) => {
                    if !self.port.arm_timer(ring, d) {
                        // A deadline no kernel timer reaches: none, it can never fire.
                        let r = self.machine.handle(SplitEvent::TimerCancelled);
                        debug_assert!(r.is_ok(), "split: {r:?}");
                    }
                }
                SplitAction::Submit {
                    child, offset, len, ..
                } => self.submit_child(ring, child, offset, len),
                SplitAction::Cancel { child } => {
                    if let Some(c) = self.children.get_mut(child.index() as usize) {
                        c.cancel = true;
                        if let Some(key) = c.key {
                            self.stats.cancels += 1;
                            // False when the completion is already reaped (in our port).
                            self.port.cancel(ring, key);
                        }
                    }
                }
                SplitAction::CancelTimer => {
                    self.port.cancel_timer(ring);
                }
                SplitAction::Complete(c) => {
                    // Every child is back: hand the buffers to the pool.
                    for child in &mut self.children {
                        child.buf = None;
                    }
                    self.outcome = Some(c);
                }
            }
        }
    }

    fn dst_offset(&self, offset: u64) -> u64 {
        match self.job {
            Job::Copy {
                src_offset,
                dst_offset,
                ..
            } => dst_offset + (offset - src_offset),
            _ => offset,
        }
    }

    /// Report a child's outcome to the machine.
    fn report(&mut self, i: usize, result: Result<u64>) {
        self.children[i].phase = Phase::Idle;
        let r = self.machine.child_completed(ChildId::new(i as u32), result);
        debug_assert!(
            r.is_ok(),
            "split driver out of step with its machine: {r:?}"
        );
    }

    fn submit_child(&mut self, ring: &mut Ring, child: ChildId, offset: u64, len: u64) {
        let i = child.index() as usize;
        let Some(mut buf) = self.children.get_mut(i).and_then(|c| c.buf.take()) else {
            // Impossible by construction (a child is armed only when idle, with its buffer
            // home); fail the child rather than panic.
            if i < self.children.len() {
                self.report(i, Err(Error::invalid("split: child has no buffer")));
            }
            return;
        };
        self.children[i].cancel = false;
        let op = match self.job {
            Job::Read { .. } | Job::Copy { .. } if offset % self.src_align != 0 => {
                // Direct I/O returns a count that is not a multiple of the alignment only
                // at end of file: this resumption is past it. End of file, without a
                // request the kernel would refuse.
                self.children[i].buf = Some(buf);
                self.report(i, Ok(0));
                return;
            }
            Job::Read { src, .. } | Job::Copy { src, .. } => {
                self.children[i].phase = Phase::Reading { offset, len };
                Op::read_len(src, offset, buf, len as usize)
            }
            Job::Write { dst, .. } => {
                let filled = buf
                    .set_len(len as usize)
                    .and_then(|()| match &mut self.on_fill {
                        Some(f) => f(offset, &mut buf),
                        None => Err(Error::invalid(
                            "split: a write job needs on_fill to fill its buffers",
                        )),
                    });
                if let Err(e) = filled {
                    self.children[i].buf = Some(buf);
                    self.report(i, Err(e));
                    return;
                }
                self.children[i].phase = Phase::Writing { len };
                Op::write(dst, offset, buf)
            }
        };
        self.issue(ring, i, op);
    }

    fn issue(&mut self, ring: &mut Ring, i: usize, op: Op) {
        self.stats.child_ops += 1;
        self.children[i].key = Some(self.port.submit(ring, op, i as u32));
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.port.in_flight());
    }

    fn on_completion(&mut self, ring: &mut Ring, done: Done<u32>) {
        let i = done.child as usize;
        let Some(slot) = self.children.get_mut(i) else {
            debug_assert!(false, "completion for an unknown child {i}");
            return;
        };
        slot.key = None;
        let mut buf = match done.bufs {
            Bufs::Pool(b) => b,
            other => {
                // Reads and writes of a `PoolBuf` always give it back as `Bufs::Pool`.
                debug_assert!(false, "unexpected buffers {other:?}");
                drop(other);
                self.report(i, Err(Error::invalid("split: child lost its buffer")));
                return;
            }
        };
        let (phase, cancel) = (slot.phase, slot.cancel);
        match (phase, done.result) {
            (Phase::Reading { offset, len }, Ok(n)) => {
                if n > 0 {
                    if let Some(f) = &mut self.on_read {
                        if let Err(e) = f(offset, &buf) {
                            self.children[i].buf = Some(buf);
                            self.report(i, Err(e));
                            return;
                        }
                    }
                }
                match self.job {
                    Job::Copy { dst, .. } if n > 0 => {
                        if cancel {
                            // Read, but the request is stopping: do not write.
                            self.children[i].buf = Some(buf);
                            self.report(i, Err(Error::new(ErrorKind::Cancelled)));
                            return;
                        }
                        // The same buffer goes out: `len()` is what was read.
                        // `len` stays the chunk's: a short read is a short transfer too.
                        self.children[i].phase = Phase::Writing { len };
                        let op = Op::write(dst, self.dst_offset(offset), buf);
                        self.issue(ring, i, op);
                    }
                    _ => {
                        buf.clear();
                        self.children[i].buf = Some(buf);
                        self.report_moved(i, u64::from(n), len);
                    }
                }
            }
            (Phase::Writing { len }, Ok(n)) => {
                buf.clear();
                self.children[i].buf = Some(buf);
                if n == 0 {
                    // No progress; retrying could loop.
                    self.report(i, Err(Error::from_errno(libc::EIO)));
                } else {
                    self.report_moved(i, u64::from(n), len);
                }
            }
            (_, Err(e)) => {
                buf.clear();
                self.children[i].buf = Some(buf);
                self.report(i, Err(e));
            }
            (Phase::Idle, Ok(_)) => {
                debug_assert!(false, "completion for an idle child");
                self.children[i].buf = Some(buf);
            }
        }
    }

    /// Report `n` of `len` bytes moved (the machine continues a short transfer), and the
    /// progress.
    fn report_moved(&mut self, i: usize, n: u64, len: u64) {
        if n > 0 && n < len {
            self.stats.short_transfers += 1;
        }
        self.report(i, Ok(n));
        if let Some(f) = &mut self.on_progress {
            f(self.machine.bytes_transferred(), self.job.len());
        }
    }
}

impl Driver for SplitDriver {
    type Output = SplitOutcome;

    fn process(&mut self, ring: &mut Ring) -> Result<Option<SplitOutcome>> {
        if !ring.owns(self.job.target()) {
            return Err(Error::new(ErrorKind::WrongRing {
                what: "split driver",
            }));
        }
        loop {
            self.pump(ring);
            match self.port.next() {
                Some(PortEvent::Op(done)) => self.on_completion(ring, done),
                Some(PortEvent::Timer { fired }) => {
                    let ev = if fired {
                        SplitEvent::Timeout
                    } else {
                        SplitEvent::TimerCancelled
                    };
                    let r = self.machine.handle(ev);
                    debug_assert!(r.is_ok(), "split: {r:?}");
                }
                None => break,
            }
        }
        Ok(match self.outcome {
            Some(c) if !self.delivered => {
                self.delivered = true;
                Some(c)
            }
            _ => None,
        })
    }

    /// Cancel the request: children in flight are cancelled; the request completes with
    /// [`ErrorKind::Cancelled`] (unless an error or the deadline came first) once they are
    /// back. Returns false if it can no longer be cancelled (it was cancelled, completed,
    /// or is completing); false, and nothing happens, on a ring other than the driver's.
    fn cancel(&mut self, ring: &mut Ring) -> bool {
        if !ring.owns(self.job.target()) {
            return false;
        }
        let cancelled = self.machine.cancel();
        self.pump(ring);
        cancelled
    }

    fn is_idle(&self) -> bool {
        self.delivered
    }
}
