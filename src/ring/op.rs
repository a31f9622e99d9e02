//! Operation descriptors and the typed `user_data` encoding.

use std::time::Duration;

use crate::buf::{IoBuf, PoolBuf};

use super::target::Target;

/// Identifies one submitted operation: its ring, its op-table slot and that slot's
/// generation.
///
/// The slot and generation are what travel through the kernel as `user_data`
/// (generation in the high 32 bits, slot in the low 32). A completion whose generation
/// does not match the slot's current one is stale and is never routed to the slot's new
/// occupant; an id from another ring matches nothing here (two rings number their slots
/// alike). Generation `u32::MAX` is reserved for the ring's own internal entries (cancel,
/// timeout, wake-up), so those can never be mistaken for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId {
    ud: u64,
    ring: u32,
}

const RESERVED_GEN: u32 = u32::MAX;

impl OpId {
    pub(crate) fn new(ring: u32, index: u32, gen: u32) -> OpId {
        debug_assert_ne!(gen, RESERVED_GEN);
        OpId {
            ud: ((gen as u64) << 32) | index as u64,
            ring,
        }
    }

    /// The id of `ring`'s operation whose SQE carried `ud`.
    pub(crate) fn from_cqe(ring: u32, ud: u64) -> OpId {
        OpId { ud, ring }
    }

    /// An id that belongs to no ring (for completions of operations that never reached
    /// one); it matches no operation.
    pub(crate) const NONE: OpId = OpId { ud: 0, ring: 0 };

    pub(crate) fn index(self) -> usize {
        (self.ud & 0xffff_ffff) as usize
    }

    pub(crate) fn gen(self) -> u32 {
        (self.ud >> 32) as u32
    }

    pub(crate) fn ring(self) -> u32 {
        self.ring
    }

    /// The raw `user_data` value the operation's SQE carries (e.g. to match a trace).
    pub fn user_data(self) -> u64 {
        self.ud
    }
}

/// `user_data` values the ring uses for its own SQEs.
pub(crate) mod sentinel {
    const fn make(n: u32) -> u64 {
        ((super::RESERVED_GEN as u64) << 32) | n as u64
    }
    /// An `ASYNC_CANCEL` request; its CQE only says whether the target was found.
    pub(crate) const CANCEL: u64 = make(0);
    /// A `LINK_TIMEOUT`; the linked operation's own CQE carries the outcome.
    pub(crate) const TIMEOUT: u64 = make(1);
    /// The poll on the wake-up eventfd that `RingHandle`s write to.
    pub(crate) const WAKE: u64 = make(2);
    /// A doorbell another ring posted to this one's CQ with `MSG_RING`: a message waits
    /// in the inbox (see `ring::mesh`).
    pub(crate) const DOORBELL: u64 = make(3);
    /// This ring's own `MSG_RING` doorbells: `make(DOORBELL_SENT | index)`, the index of
    /// the doorbell in the ring's table of those in flight.
    const DOORBELL_SENT: u32 = 1 << 31;

    /// The user_data of doorbell `index` sent by this ring; `None` past the range.
    pub(crate) fn doorbell_sent(index: usize) -> Option<u64> {
        u32::try_from(index)
            .ok()
            .filter(|&i| i < DOORBELL_SENT)
            .map(|i| make(DOORBELL_SENT | i))
    }

    /// The index of a doorbell this ring sent, if `ud` is one.
    pub(crate) fn doorbell_index(ud: u64) -> Option<usize> {
        let low = ud as u32;
        (is_sentinel(ud) && low & DOORBELL_SENT != 0).then_some((low & !DOORBELL_SENT) as usize)
    }

    pub(crate) fn is_sentinel(ud: u64) -> bool {
        (ud >> 32) as u32 == super::RESERVED_GEN
    }
}

/// A duration as the kernel takes it (`struct __kernel_timespec`, signed seconds),
/// saturated: anything of 2^63 s or more becomes `i64::MAX` seconds, which the kernel
/// clamps to `KTIME_MAX` — a timer that never fires. (The plain conversion would wrap the
/// seconds negative: an instant timeout, or `EINVAL`.)
pub(crate) fn kernel_timespec(d: Duration) -> io_uring::types::Timespec {
    const MAX_SECS: u64 = i64::MAX as u64;
    if d.as_secs() > MAX_SECS {
        io_uring::types::Timespec::new().sec(MAX_SECS)
    } else {
        io_uring::types::Timespec::from(d)
    }
}

/// `KTIME_MAX / NSEC_PER_SEC`: the kernel turns a timespec of this many seconds or more
/// into `KTIME_MAX`, a timer that never fires.
const KTIME_SEC_MAX: u64 = i64::MAX as u64 / 1_000_000_000;

/// The deadline to arm a kernel timer with, if any: `None` for no deadline, and for one no
/// kernel timer can reach — `KTIME_SEC_MAX` seconds or more (about 292 years), such as
/// `from_secs(i64::MAX)`, or more than a timespec holds (2⁶³ s, `Duration::MAX`). Such a
/// timer could never fire; armed, it would only keep the ring busy forever after a driver
/// dropped mid-flight. For the drivers' own deadline timers.
pub(crate) fn kernel_deadline(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| d.as_secs() < KTIME_SEC_MAX)
}

/// The next generation after `g`, skipping the reserved one.
pub(crate) fn next_gen(g: u32) -> u32 {
    let n = g.wrapping_add(1);
    if n == RESERVED_GEN {
        0
    } else {
        n
    }
}

/// A byte range inside one buffer of a vectored transfer ([`Op::readv_parts`],
/// [`Op::writev_parts`]): `len` bytes from byte `start` of the buffer's data area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufPart {
    /// Offset of the range's first byte from the start of the buffer's data area.
    pub start: usize,
    /// Length of the range in bytes (not 0).
    pub len: usize,
}

/// An operation to submit to a [`Ring`](super::Ring): what to do, on which target, with
/// which buffers (owned by the operation until it completes), and optionally a deadline
/// and a tag that comes back in the [`Completion`](crate::Completion).
///
/// ```no_run
/// # use iocomplete::{Op, Ring, BufferPool};
/// # let mut ring = Ring::builder().build()?;
/// # let pool = BufferPool::builder().build()?;
/// # let file = ring.register(std::fs::File::open("/etc/hostname").unwrap())?;
/// let op = Op::read(file, 0, pool.try_get()?)
///     .deadline(std::time::Duration::from_secs(1))
///     .tag(42);
/// let done = ring.submit(op).wait()?;
/// assert_eq!(done.tag(), 42);
/// # Ok::<(), iocomplete::Error>(())
/// ```
#[derive(Debug)]
pub struct Op {
    pub(crate) kind: OpKind,
    pub(crate) deadline: Option<Duration>,
    pub(crate) tag: u64,
    /// `RWF_NOWAIT` on a read (see [`Op::nowait`]).
    pub(crate) nowait: bool,
}

/// Where a single read or write lands in its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pos {
    /// At this file offset (ignored by streams).
    At(u64),
    /// At the file's own position, which the transfer advances (`write(2)`'s behaviour;
    /// io_uring's offset `-1`). Only ever chosen explicitly ([`Op::write_cursor`]).
    Cursor,
}

#[derive(Debug)]
pub(crate) enum OpKind {
    Nop,
    Read {
        target: Target,
        offset: u64,
        buf: PoolBuf,
        /// Where in the data area the read lands (0, or `buf.len()` for an append).
        at: usize,
        len: usize,
    },
    Write {
        target: Target,
        pos: Pos,
        buf: IoBuf,
        frame: bool,
    },
    Readv {
        target: Target,
        offset: u64,
        bufs: Vec<PoolBuf>,
        /// Byte ranges of the buffers' data areas (`readv_parts`); `None`: each buffer
        /// from its start, up to `len()`.
        parts: Option<Vec<BufPart>>,
    },
    Writev {
        target: Target,
        offset: u64,
        bufs: Vec<IoBuf>,
        /// Byte ranges of the buffers' data (`writev_parts`); `None`: all of each.
        parts: Option<Vec<BufPart>>,
    },
    Timeout {
        after: Duration,
    },
    Fsync {
        target: Target,
        datasync: bool,
    },
    ReadMulti {
        target: Target,
        group: super::buf_ring::BufRing,
    },
    Poll {
        target: Target,
        events: u32,
    },
}

impl Op {
    fn of(kind: OpKind) -> Op {
        Op {
            kind,
            deadline: None,
            tag: 0,
            nowait: false,
        }
    }

    /// A no-op: completes with 0 bytes (useful to measure per-op overhead).
    pub fn nop() -> Op {
        Op::of(OpKind::Nop)
    }

    /// Read into `buf`'s data area, filling up to its capacity. On seekable targets the
    /// read starts at `offset`; on streams (pipes, sockets, ttys) `offset` is ignored.
    /// The completion gives `buf` back with `len()` = bytes read; its header is untouched.
    pub fn read(target: Target, offset: u64, buf: PoolBuf) -> Op {
        let len = buf.capacity();
        Op::read_len(target, offset, buf, len)
    }

    /// Like [`read`](Op::read), reading at most `len` bytes (`0 < len <= capacity`).
    pub fn read_len(target: Target, offset: u64, buf: PoolBuf, len: usize) -> Op {
        Op::of(OpKind::Read {
            target,
            offset,
            buf,
            at: 0,
            len,
        })
    }

    /// Read at most `len` bytes into `buf`'s data area right after the `buf.len()` bytes
    /// it already holds (`0 < len <= capacity - buf.len()`): the building block of
    /// filling one buffer by several reads (FIFO receive). On success the completion gives
    /// `buf` back with `len()` = previous length + bytes read; on error its length and
    /// bytes are unchanged.
    pub fn read_append(target: Target, offset: u64, buf: PoolBuf, len: usize) -> Op {
        let at = buf.len();
        Op::of(OpKind::Read {
            target,
            offset,
            buf,
            at,
            len,
        })
    }

    /// Write `buf`'s data (`len()` bytes, not the header). The completion gives the
    /// buffer back.
    pub fn write(target: Target, offset: u64, buf: impl Into<IoBuf>) -> Op {
        Op::of(OpKind::Write {
            target,
            pos: Pos::At(offset),
            buf: buf.into(),
            frame: false,
        })
    }

    /// Write `buf`'s data at the target's current file position, advancing it, as
    /// `write(2)` does: for a stdout redirected to a file (`> out`, `>> log`), where the
    /// next writer must find the position after these bytes. On streams it is
    /// [`write`](Op::write). (Positional writes never fall back to this: an offset past
    /// `i64::MAX` is refused with
    /// [`ErrorKind::OffsetOutOfRange`](crate::ErrorKind::OffsetOutOfRange).) Completions of
    /// several cursor writes in flight at once may land in any order: keep one in flight.
    pub fn write_cursor(target: Target, buf: impl Into<IoBuf>) -> Op {
        Op::of(OpKind::Write {
            target,
            pos: Pos::Cursor,
            buf: buf.into(),
            frame: false,
        })
    }

    /// Write `buf`'s whole frame: header then data, in one contiguous write.
    pub fn write_frame(target: Target, offset: u64, buf: impl Into<IoBuf>) -> Op {
        Op::of(OpKind::Write {
            target,
            pos: Pos::At(offset),
            buf: buf.into(),
            frame: true,
        })
    }

    /// Vectored read: fills the buffers in order, each up to its current `len()` (set it
    /// with [`PoolBuf::set_len`] to the bytes wanted). On completion each buffer's `len()`
    /// is the bytes it actually received. Uses `IORING_OP_READV_FIXED` when the buffers
    /// are registered and the kernel has it.
    pub fn readv(target: Target, offset: u64, bufs: Vec<PoolBuf>) -> Op {
        Op::of(OpKind::Readv {
            target,
            offset,
            bufs,
            parts: None,
        })
    }

    /// Vectored write of each buffer's data, in order.
    pub fn writev(target: Target, offset: u64, bufs: Vec<IoBuf>) -> Op {
        Op::of(OpKind::Writev {
            target,
            offset,
            bufs,
            parts: None,
        })
    }

    /// Vectored read into byte ranges of the buffers: `bufs[i]` receives up to
    /// `parts[i].len` bytes at `parts[i].start` of its data area (the range must lie within
    /// its capacity). One part per buffer. The buffers' `len()` is left as it was: the
    /// caller knows the ranges and the byte count. Used by scatter/gather transfers that
    /// start or end inside a buffer. Same opcodes as [`readv`](Op::readv) (`READV_FIXED`
    /// when possible).
    pub fn readv_parts(target: Target, offset: u64, bufs: Vec<PoolBuf>, parts: Vec<BufPart>) -> Op {
        Op::of(OpKind::Readv {
            target,
            offset,
            bufs,
            parts: Some(parts),
        })
    }

    /// Vectored write of byte ranges of the buffers' data: `parts[i].len` bytes of
    /// `bufs[i].data()` from `parts[i].start` (the range must lie within the data). One
    /// part per buffer.
    pub fn writev_parts(target: Target, offset: u64, bufs: Vec<IoBuf>, parts: Vec<BufPart>) -> Op {
        Op::of(OpKind::Writev {
            target,
            offset,
            bufs,
            parts: Some(parts),
        })
    }

    /// A standalone timer (`IORING_OP_TIMEOUT`, no completion count): completes with
    /// [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut) after `after`, or with
    /// [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled) if
    /// [`Ring::cancel`](super::Ring::cancel) removes it first. A request-level deadline
    /// shared by several operations (see `split` and `dma` drivers). It takes no
    /// [`deadline`](Op::deadline) of its own. A duration too large for the kernel (2^63 s
    /// and up, e.g. `Duration::MAX`) never fires: the timer then ends only by a cancel.
    pub fn timeout(after: Duration) -> Op {
        Op::of(OpKind::Timeout { after })
    }

    /// Multishot read (`IORING_OP_READ_MULTISHOT`, Linux 6.7) from a stream (pipe, FIFO,
    /// socket, tty) into buffers the kernel picks from `group`: one completion per
    /// received buffer, each with [`Completion::has_more`](crate::Completion::has_more)
    /// true while the read stays armed; the last one has it false (end of stream, an
    /// error, `ENOBUFS` when the buffer ring ran dry, or a cancel). Deliver it to a
    /// [`CompletionQueue`](crate::CompletionQueue) (or detach it). Regular files are
    /// refused up front (the kernel would answer `EBADFD`).
    ///
    /// Only for files that read without blocking (`FMODE_NOWAIT`: `pipe2` pipes,
    /// sockets). On a FIFO opened by path, a pipe reopened as `/dev/stdin`, or a tty,
    /// Linux (6.18) keeps the read armed after end of file and its last completion never
    /// comes; [`ContinuousReader`](crate::ContinuousReader) detects such files (its first
    /// read is a `RWF_NOWAIT` probe) and reads them single-shot.
    pub fn read_multishot(target: Target, group: super::buf_ring::BufRing) -> Op {
        Op::of(OpKind::ReadMulti { target, group })
    }

    /// `fsync` (or `fdatasync` when `datasync`) a file, block device or directory. Other
    /// kinds are refused with
    /// [`ErrorKind::WrongTargetKind`](crate::ErrorKind::WrongTargetKind), `O_PATH`
    /// descriptors with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput),
    /// without a syscall.
    pub fn fsync(target: Target, datasync: bool) -> Op {
        Op::of(OpKind::Fsync { target, datasync })
    }

    /// Wait for readiness (one-shot `POLL_ADD`): completes with the ready event mask
    /// (`libc::POLLIN` etc.) as its byte count. An empty mask, and an `O_PATH` descriptor,
    /// are refused with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) without
    /// a syscall.
    pub fn poll(target: Target, events: u32) -> Op {
        Op::of(OpKind::Poll { target, events })
    }

    /// Complete with [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut) if not done
    /// within `d` (an `IORING_OP_LINK_TIMEOUT` linked to the operation). Any duration is
    /// accepted; one too large for the kernel (2^63 s and up, e.g. `Duration::MAX`) means
    /// "never".
    pub fn deadline(mut self, d: Duration) -> Op {
        self.deadline = Some(d);
        self
    }

    /// Make a read complete at once with `EAGAIN` when the source has no data, instead of
    /// waiting for it (`RWF_NOWAIT` in the read's `rw_flags`).
    ///
    /// io_uring waits inside the kernel for data on a pollable file (pipe, socket, tty)
    /// even when its descriptor is `O_NONBLOCK` (Linux 6.x arms an internal poll and
    /// retries), so this is the way to learn that a stream ran dry. Files whose driver
    /// cannot read without blocking (no `FMODE_NOWAIT`: ttys, many character devices)
    /// answer `EOPNOTSUPP`. Reads only: any other operation with it is refused with
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) without a syscall.
    pub fn nowait(mut self) -> Op {
        self.nowait = true;
        self
    }

    /// A caller's value carried to the [`Completion`](crate::Completion) (e.g. to route
    /// completions popped from a shared queue).
    pub fn tag(mut self, tag: u64) -> Op {
        self.tag = tag;
        self
    }
}

#[cfg(test)]
mod tests;
