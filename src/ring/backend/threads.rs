//! The thread-pool backend: an interpreter of io_uring submission entries, for hosts where
//! io_uring is refused (seccomp profiles, `kernel.io_uring_disabled`, gVisor, old kernels).
//!
//! The ring builds its SQEs exactly as for io_uring and hands them here. Each 64-byte
//! `struct io_uring_sqe` (a stable kernel ABI) is decoded and executed with ordinary
//! system calls; its completion is queued as `(user_data, result, flags)`, the shape of a
//! CQE, so the ring routes it exactly as it routes the kernel's.
//!
//! | opcode | executed as |
//! |---|---|
//! | `READ`, `READ_FIXED`, `READV`, `READV_FIXED` | `preadv2` at the offset (`-1`: the file's position) with the SQE's `rw_flags` |
//! | `WRITE`, `WRITE_FIXED`, `WRITEV`, `WRITEV_FIXED` | `pwritev2`, likewise (`RWF_NOAPPEND`, `RWF_NOWAIT` pass through) |
//! | `FSYNC` | `fsync`, or `fdatasync` with `IORING_FSYNC_DATASYNC` |
//! | `POLL_ADD` | `poll`; the result is the ready mask. Multishot: one completion with `IORING_CQE_F_MORE`, then armed again once the ring has routed it ([`Threads::rearm`]) |
//! | `NOP` | completes at once with 0 |
//! | `TIMEOUT` (relative, no count) | a timer thread completes it with `-ETIME` |
//! | `ASYNC_CANCEL` | by `user_data`, or every operation with `IORING_ASYNC_CANCEL_ANY` (see below) |
//! | `LINK_TIMEOUT` after an `IOSQE_IO_LINK` entry | a deadline on that operation (see below) |
//! | anything else | `-EINVAL` |
//!
//! As with io_uring, what can be done without blocking is done at submission, on the
//! ring's thread: a stream transfer that finds data (or room), a positional transfer of a
//! buffered file the page cache serves whole, a poll whose events are there (all with
//! `RWF_NOWAIT` or a zero timeout). Their completions go straight to the ring's list of
//! copied-out CQEs (no lock, no eventfd). The rest is queued for the threads below, which
//! are woken at the ring's next enter — when io_uring would start it too. A ring that then
//! waits with no time limit for the only operation it has, a file job not started yet,
//! runs it on its own thread: nothing else could end that wait, and a fast device's read
//! takes less time than waking a worker and being woken by it.
//!
//! ## Threads
//!
//! * **I/O workers** (at most [`RingBuilder::threads`](crate::RingBuilder::threads): by
//!   default 4 per CPU, at most the SQ entries; started as work arrives and kept until
//!   the ring is dropped) run what does not wait for another party: positional reads and
//!   writes of files and block devices, `fsync`, and reads or writes with `RWF_NOWAIT`.
//! * **Stream threads** run what may wait for another party indefinitely: reads and writes
//!   of pipes, sockets, ttys and other streams (SQE offset `-1`), and `POLL_ADD`. Each such
//!   operation gets a thread of its own for as long as it waits — an idle one if there is
//!   one, else a new one (idle ones retire after 10 s) — so any number of reads blocked on
//!   idle pipes never delays file I/O, nor each other. A stream thread waits in
//!   `poll(2)` on the descriptor *and* an eventfd of its own, so a cancel, a deadline or
//!   the ring's drop always ends the wait; then it transfers with `RWF_NOWAIT` (one
//!   attempt, as io_uring does: a write to a pipe may be short), polling again if another
//!   reader took the data first. A stream that refuses `RWF_NOWAIT` (`EOPNOTSUPP`: ttys,
//!   a FIFO opened by path) is read plainly once `poll` says it is ready.
//! * **One manager thread**, started with the ring, starts the others when they are
//!   needed (so the ring's own thread never allocates for one) and fires `TIMEOUT`s and
//!   the deadlines of operations waiting for an I/O worker.
//!
//! ## Cancel and deadlines
//!
//! A cancel (or a passed deadline) completes an operation still queued with `-ECANCELED`
//! without running it, and wakes one waiting in `poll` (a stream transfer, a `POLL_ADD`),
//! which then completes with `-ECANCELED`. A positional read or write already in its
//! system call cannot be interrupted: the cancel's own completion is `-EALREADY` and the
//! operation completes normally. The linked timeout's own completion is what io_uring
//! posts: `-ETIME` when it cancelled the operation, `-EALREADY` when the operation was
//! running, `-ECANCELED` when the operation completed first.
//!
//! ## Buffers
//!
//! The kernel-owns-the-buffer rule becomes "the worker owns the buffer until it has posted
//! the completion": a worker touches an operation's memory (buffers, iovec array) only
//! before posting, and the ring parks that memory in its op table until it routes the
//! completion. Descriptors too: a target the ring closes while operations on it are in
//! flight is closed only after the last of them completes
//! ([`release_fd`](Threads::release_fd)), so its number cannot be reused under a worker.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue};
use rustc_hash::FxHashMap as HashMap;

use crate::error::{Error, Result};

use super::super::probe::{OP_READV_FIXED, OP_WRITEV_FIXED};

/// Most I/O workers a ring may ask for.
pub(crate) const MAX_WORKERS: usize = 1024;
/// How long an idle stream thread waits for work before it exits.
const STREAM_IDLE: Duration = Duration::from_secs(10);
/// Stack of each backend thread: they only make system calls.
const STACK: usize = 256 * 1024;
/// Transfers in a row that `poll` called ready and then found nothing (`EAGAIN`) before a
/// stream thread starts pausing between attempts (a device whose poll lies must not make
/// it spin).
const SPURIOUS: u32 = 16;

// Offsets in `struct io_uring_sqe` (include/uapi/linux/io_uring.h), a stable ABI; the ring
// pins the SQE's size in `submit.rs`.
const SQE_OPCODE: usize = 0;
const SQE_FLAGS: usize = 1;
const SQE_FD: usize = 4;
const SQE_OFF: usize = 8;
const SQE_ADDR: usize = 16;
const SQE_LEN: usize = 24;
/// `rw_flags`, `fsync_flags`, `poll32_events`, `timeout_flags`, `cancel_flags`.
const SQE_OP_FLAGS: usize = 28;
const SQE_USER_DATA: usize = 32;
const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);

/// `IOSQE_FIXED_FILE`.
const IOSQE_FIXED_FILE: u8 = 1 << 0;
/// `IOSQE_IO_LINK`.
const IOSQE_IO_LINK: u8 = 1 << 2;
/// `IORING_POLL_ADD_MULTI` (in the SQE's `len`).
const POLL_ADD_MULTI: u32 = 1;
/// `IORING_ASYNC_CANCEL_ALL`.
const CANCEL_ALL: u32 = 1;
/// `IORING_ASYNC_CANCEL_ANY`.
const CANCEL_ANY: u32 = 4;
/// `IORING_FSYNC_DATASYNC`.
const FSYNC_DATASYNC: u32 = 1;
/// `IORING_CQE_F_MORE`.
const CQE_F_MORE: u32 = 2;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; a poisoned lock still holds a consistent
    // state.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The fields of an SQE this backend reads.
#[derive(Clone, Copy)]
struct Sqe {
    opcode: u8,
    flags: u8,
    fd: i32,
    off: u64,
    addr: u64,
    len: u32,
    op_flags: u32,
    user_data: u64,
}

impl Sqe {
    fn read(e: &squeue::Entry) -> Sqe {
        // SAFETY: `squeue::Entry` is `repr(C)` around `struct io_uring_sqe`, 64 bytes
        // (asserted above), with no padding bytes the kernel ABI leaves undefined: every
        // byte is initialised by the builders, which start from a zeroed SQE.
        let raw: [u8; 64] = unsafe { std::mem::transmute_copy(e) };
        let u32_at = |o: usize| u32::from_ne_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[o..o + 8]);
            u64::from_ne_bytes(b)
        };
        Sqe {
            opcode: raw[SQE_OPCODE],
            flags: raw[SQE_FLAGS],
            fd: u32_at(SQE_FD) as i32,
            off: u64_at(SQE_OFF),
            addr: u64_at(SQE_ADDR),
            len: u32_at(SQE_LEN),
            op_flags: u32_at(SQE_OP_FLAGS),
            user_data: u64_at(SQE_USER_DATA),
        }
    }

    /// The relative duration of the `struct __kernel_timespec` at `addr` (a `TIMEOUT` or
    /// `LINK_TIMEOUT`); `Err(-EINVAL)` for a malformed one.
    fn timespec(&self) -> std::result::Result<Duration, i32> {
        if self.addr == 0 {
            return Err(-libc::EFAULT);
        }
        // SAFETY: the ring points `addr` at a `Timespec` boxed in the operation's op-table
        // entry, alive until the operation's completion is routed; like the kernel, we
        // read it once, at submission. `read_unaligned` makes no alignment assumption.
        let ts = unsafe { std::ptr::read_unaligned(self.addr as *const [i64; 2]) };
        let (sec, nsec) = (ts[0], ts[1]);
        if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
            return Err(-libc::EINVAL);
        }
        Ok(Duration::new(sec as u64, nsec as u32))
    }
}

/// Where a transfer's bytes are.
#[derive(Clone, Copy)]
enum Mem {
    /// One buffer (`READ`, `WRITE`).
    One(*mut libc::c_void, usize),
    /// An iovec array (`READV`, `WRITEV`).
    Vec(*const libc::iovec, i32),
}

/// A read or write.
#[derive(Clone, Copy)]
struct Rw {
    write: bool,
    fd: RawFd,
    mem: Mem,
    off: u64,
    flags: i32,
}

impl Rw {
    /// One `preadv2`/`pwritev2` at `off` (`-1`: the file's position) with `flags`; the
    /// byte count or `-errno`.
    fn call(&self, off: i64, flags: i32) -> i32 {
        self.call_on(self.fd, off, flags)
    }

    /// [`call`](Self::call) on another descriptor of the same file (a non-blocking twin,
    /// see `nonblocking_twin`).
    fn call_on(&self, fd: RawFd, off: i64, flags: i32) -> i32 {
        let one;
        let (iov, cnt) = match self.mem {
            Mem::One(p, n) => {
                one = libc::iovec {
                    iov_base: p,
                    iov_len: n,
                };
                (&one as *const libc::iovec, 1)
            }
            Mem::Vec(p, n) => (p, n),
        };
        loop {
            // SAFETY: the iovecs describe memory the ring parked for this operation (pool
            // slots, and the iovec array in the op-table entry), which stays valid until
            // the ring routes this operation's completion — posted only after this call.
            // A read writes only within the iovecs; a write only reads them.
            let r = unsafe {
                if self.write {
                    libc::pwritev2(fd, iov, cnt, off, flags)
                } else {
                    libc::preadv2(fd, iov, cnt, off, flags)
                }
            };
            if r >= 0 {
                // At most MAX_RW_COUNT (< i32::MAX) bytes move in one call.
                return i32::try_from(r).unwrap_or(i32::MAX);
            }
            match errno() {
                libc::EINTR => continue,
                e => return -e,
            }
        }
    }

    /// Bytes the transfer asks for.
    fn len(&self) -> usize {
        match self.mem {
            Mem::One(_, n) => n,
            Mem::Vec(p, n) => {
                // SAFETY: the ring parked this iovec array in the op table for the
                // operation (see `call`); `n` is its length.
                let iov = unsafe { std::slice::from_raw_parts(p, usize::try_from(n).unwrap_or(0)) };
                iov.iter().map(|v| v.iov_len).sum()
            }
        }
    }

    /// The offset argument: `-1` for "the file's position" (SQE offset `u64::MAX`).
    fn off(&self) -> i64 {
        // The ring checked `off + len <= i64::MAX` for positional transfers.
        i64::try_from(self.off).unwrap_or(-1)
    }

    fn at_cursor(&self) -> bool {
        self.off == u64::MAX
    }
}

/// What an SQE asks for.
enum Decoded {
    /// Done at once, with this result (`NOP`, a malformed entry).
    Done(i32),
    /// Work for a thread (unless it completes at submission).
    Work(Work),
    Cancel,
    Timeout,
}

impl Sqe {
    fn decode(&self) -> Decoded {
        let rw = |write: bool, vectored: bool| {
            let mem = if vectored {
                Mem::Vec(self.addr as *const libc::iovec, self.len as i32)
            } else {
                Mem::One(self.addr as *mut libc::c_void, self.len as usize)
            };
            Decoded::Work(Work::Rw(Rw {
                write,
                fd: self.fd,
                mem,
                off: self.off,
                flags: self.op_flags as i32,
            }))
        };
        match self.opcode {
            opcode::Nop::CODE => Decoded::Done(0),
            opcode::AsyncCancel::CODE => Decoded::Cancel,
            opcode::Timeout::CODE => Decoded::Timeout,
            // Never sent: the ring registers no files with this backend.
            _ if self.flags & IOSQE_FIXED_FILE != 0 => Decoded::Done(-libc::EBADF),
            opcode::Read::CODE | opcode::ReadFixed::CODE => rw(false, false),
            opcode::Write::CODE | opcode::WriteFixed::CODE => rw(true, false),
            opcode::Readv::CODE | OP_READV_FIXED => rw(false, true),
            opcode::Writev::CODE | OP_WRITEV_FIXED => rw(true, true),
            opcode::Fsync::CODE => Decoded::Work(Work::Fsync {
                fd: self.fd,
                datasync: self.op_flags & FSYNC_DATASYNC != 0,
            }),
            opcode::PollAdd::CODE => Decoded::Work(Work::Poll {
                fd: self.fd,
                // Poll events are the low 16 bits (`poll32_events`).
                events: self.op_flags as u16 as i16,
                multi: self.len & POLL_ADD_MULTI != 0,
            }),
            // A LINK_TIMEOUT not after a linked request, or an unknown opcode.
            _ => Decoded::Done(-libc::EINVAL),
        }
    }
}

/// What the ring said of a descriptor when it registered it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FdClass {
    /// A pipe, socket, tty or other stream (else a file or block device).
    pub(crate) stream: bool,
    /// Opened `O_DIRECT`: a transfer waits for the device even with `RWF_NOWAIT`.
    pub(crate) direct: bool,
}

/// What a job does.
#[derive(Clone, Copy)]
enum Work {
    Rw(Rw),
    Fsync { fd: RawFd, datasync: bool },
    Poll { fd: RawFd, events: i16, multi: bool },
}

impl Work {
    fn fd(&self) -> RawFd {
        match *self {
            Work::Rw(rw) => rw.fd,
            Work::Fsync { fd, .. } | Work::Poll { fd, .. } => fd,
        }
    }

    /// Whether it may wait for another party (a stream thread's job), given what the
    /// ring said of its descriptor.
    fn is_stream(&self, class: Option<FdClass>) -> bool {
        match self {
            Work::Rw(rw) => {
                let stream = class.map_or(rw.at_cursor(), |c| c.stream);
                stream && rw.flags & libc::RWF_NOWAIT == 0
            }
            Work::Poll { .. } => true,
            Work::Fsync { .. } => false,
        }
    }
}

/// A job in a queue.
struct Job {
    ud: u64,
    seq: u64,
    work: Work,
    /// The ring did not describe the descriptor (no `FdClass`): a stream thread checks
    /// whether it is a file after all (see `run_stream`).
    unknown: bool,
}

// SAFETY: a job's pointers name memory the ring parks for the operation until its
// completion is routed (see `Rw::call`); only the one thread that claims the job uses
// them, and it posts the completion after its last use.
unsafe impl Send for Job {}

/// Why an operation stops waiting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    Cancel,
    Deadline,
}

/// Where a live operation is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In a queue, not started.
    Queued,
    /// In a system call (or between two).
    Running,
    /// Waiting in `poll` on a stream thread, woken through this eventfd.
    Blocked(RawFd),
    /// A `TIMEOUT`, waiting for the manager thread.
    Timer,
}

/// A live operation, by `user_data`.
struct Live {
    seq: u64,
    phase: Phase,
    cancel: Option<Why>,
    deadline: Option<Instant>,
    /// When its entry in `State::timers` fires, while one is armed.
    timer: Option<Instant>,
    /// The `user_data` of its linked timeout, until that has completed.
    link: Option<u64>,
    fd: Option<RawFd>,
    stream: bool,
    /// A multishot poll may post again (the ring routed its last completion).
    rearmed: bool,
}

/// A timer: `TIMEOUT`s and the deadlines of jobs waiting for an I/O worker. Entries of
/// operations that completed first stay in the heap until they come up or the heap is
/// compacted (no allocation per timer once the heap has grown).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct TimerEntry {
    when: Instant,
    seq: u64,
    ud: u64,
}

#[derive(Default)]
struct State {
    jobs: HashMap<u64, Live>,
    file_q: VecDeque<Job>,
    stream_q: VecDeque<Job>,
    timers: BinaryHeap<Reverse<TimerEntry>>,
    /// Entries of `timers` whose operation still waits for them.
    armed_timers: usize,
    /// Live jobs per descriptor.
    fd_users: HashMap<RawFd, u32>,
    /// Descriptors the ring closed while jobs still used them.
    deferred: Vec<OwnedFd>,
    seq: u64,
    workers: usize,
    idle_workers: usize,
    starting_workers: usize,
    streamers: usize,
    idle_streamers: usize,
    starting_streamers: usize,
    /// Threads the manager is asked to start.
    spawn_workers: usize,
    spawn_streamers: usize,
    shutdown: bool,
}

impl State {
    /// Remove a live job (its timer, its hold on its descriptor): it completes now.
    fn retire(&mut self, ud: u64) -> Option<Live> {
        let live = self.jobs.remove(&ud)?;
        if live.timer.is_some() {
            self.armed_timers -= 1;
        }
        if let Some(fd) = live.fd {
            if let Some(n) = self.fd_users.get_mut(&fd) {
                *n -= 1;
                if *n == 0 {
                    self.fd_users.remove(&fd);
                    if let Some(i) = self.deferred.iter().position(|f| f.as_raw_fd() == fd) {
                        // Closed now: the last job using it is done.
                        drop(self.deferred.swap_remove(i));
                    }
                }
            }
        }
        Some(live)
    }

    /// Move a queued job to `Running`, if it is still that job and still queued.
    fn claim(&mut self, job: &Job) -> bool {
        match self.jobs.get_mut(&job.ud) {
            Some(l) if l.seq == job.seq && l.phase == Phase::Queued => {
                l.phase = Phase::Running;
                true
            }
            _ => false,
        }
    }

    /// Arm a timer for job `ud`.
    fn arm_timer(&mut self, when: Instant, seq: u64, ud: u64) {
        // Entries of completed operations left behind: dropped in place once they
        // outnumber the armed ones (amortised; `retain` does not allocate).
        if self.timers.len() > 2 * self.armed_timers + 64 {
            let jobs = &self.jobs;
            self.timers.retain(|Reverse(t)| {
                jobs.get(&t.ud)
                    .is_some_and(|l| l.seq == t.seq && l.timer == Some(t.when))
            });
        }
        self.timers.push(Reverse(TimerEntry { when, seq, ud }));
        self.armed_timers += 1;
    }

    /// One more thread for the queue just pushed to, if those there cannot take it:
    /// counted now, started by the manager.
    fn grow(&mut self, stream: bool, max_workers: usize) -> bool {
        if stream {
            if self.stream_q.len() <= self.idle_streamers + self.starting_streamers {
                return false;
            }
            self.streamers += 1;
            self.starting_streamers += 1;
            self.spawn_streamers += 1;
        } else {
            if self.file_q.len() <= self.idle_workers + self.starting_workers
                || self.workers >= max_workers
            {
                return false;
            }
            self.workers += 1;
            self.starting_workers += 1;
            self.spawn_workers += 1;
        }
        true
    }
}

/// Completions waiting for the ring.
struct Cq {
    items: VecDeque<(u64, i32, u32)>,
    /// The eventfd holds a count (set on the first completion after a drain).
    signalled: bool,
    /// The ring waits for this many completions (0: it does not wait).
    want: usize,
}

struct Shared {
    st: Mutex<State>,
    file_cv: Condvar,
    stream_cv: Condvar,
    /// Wakes the manager: a timer armed, threads to start, shutdown.
    manager_cv: Condvar,
    cq: Mutex<Cq>,
    cq_cv: Condvar,
    /// `cq.items.len()`, readable without the lock (see `has_completions`).
    cq_len: AtomicUsize,
    /// Readable while completions wait: the ring's descriptor for event loops.
    signal: OwnedFd,
    max_workers: usize,
}

fn eventfd() -> Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::last_os());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn efd_write(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd; a full counter (EAGAIN)
    // already signals.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

fn efd_clear(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64 from an eventfd; EAGAIN (zero) is fine.
    let _ = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

/// Whether `fd` is a regular file or a block device (always ready: never polled).
fn seekable(fd: RawFd) -> bool {
    // SAFETY: `stat` is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return false;
    }
    matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFBLK)
}

/// Wait until `fd` (ignored when negative) has one of `events`, the eventfd `wake` is
/// signalled (then cleared), or `deadline` passes. The ready events of `fd` (0 if none),
/// or `Err(errno)`.
fn wait_ready(
    fd: RawFd,
    events: i16,
    wake: RawFd,
    deadline: Option<Instant>,
) -> std::result::Result<i16, i32> {
    let mut fds = [
        libc::pollfd {
            fd,
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ts = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        libc::timespec {
            tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: left.subsec_nanos().into(),
        }
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` is a valid array of 2 pollfds and `tsp` null or a valid timespec,
    // both alive across the call; no signal mask is passed.
    let r = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, tsp, std::ptr::null()) };
    if r < 0 {
        return match errno() {
            libc::EINTR => Ok(0),
            e => Err(e),
        };
    }
    if fds[1].revents != 0 {
        efd_clear(wake);
    }
    Ok(fds[0].revents)
}

/// Whether [`inline`] may complete `work` (without calling anything).
fn inline_candidate(work: &Work, class: Option<FdClass>) -> bool {
    match *work {
        Work::Rw(rw) => {
            class.map_or(rw.at_cursor(), |c| c.stream) || buffered_positional(work, class)
        }
        Work::Poll { multi, .. } => !multi,
        Work::Fsync { .. } => false,
    }
}

/// Whether `work` is a transfer at an offset of a file (or block device) opened without
/// `O_DIRECT`: one the page cache may serve whole, without waiting (`RWF_NOWAIT`).
fn buffered_positional(work: &Work, class: Option<FdClass>) -> bool {
    matches!(work, Work::Rw(rw) if !rw.at_cursor()) && class.is_some_and(|c| !c.stream && !c.direct)
}

/// A buffered positional transfer tried with `RWF_NOWAIT`, on the ring's thread: its
/// result, or `None` if a worker must do it (not all of it in the page cache, or the file
/// does not take `RWF_NOWAIT`). A short transfer is redone whole by a worker: reading or
/// writing the same bytes at the same offset again changes nothing.
fn nowait(rw: Rw) -> Option<i32> {
    let r = rw.call(rw.off(), rw.flags | libc::RWF_NOWAIT);
    if rw.flags & libc::RWF_NOWAIT != 0 {
        return Some(r); // the caller's own `RWF_NOWAIT`: whatever it gives
    }
    let whole = usize::try_from(r).is_ok_and(|n| n == rw.len());
    let failed = r < 0 && r != -libc::EAGAIN && r != -libc::EOPNOTSUPP;
    (whole || failed).then_some(r)
}

/// What io_uring does at submission, before it involves a worker: a stream transfer
/// takes the data (or room) already there, a positional transfer of a buffered file is done if the page
/// cache can serve it whole, a poll reports readiness already there — all with
/// `RWF_NOWAIT` or a zero timeout, so this never blocks. The result, or `None` to queue
/// the job.
fn inline(work: &Work, class: Option<FdClass>) -> Option<i32> {
    match *work {
        Work::Rw(rw) => {
            let own_nowait = rw.flags & libc::RWF_NOWAIT != 0;
            let stream = class.map_or(rw.at_cursor(), |c| c.stream);
            if stream {
                // Whatever is there (or whatever room), however little: a stream
                // transfer's answer, as io_uring's first, non-blocking attempt gives.
                let r = rw.call(-1, rw.flags | libc::RWF_NOWAIT);
                let again = r == -libc::EAGAIN && !own_nowait;
                return (!again && r != -libc::EOPNOTSUPP).then_some(r);
            }
            // Positional only: a transfer at the file's position cannot be tried twice.
            if !buffered_positional(work, class) {
                return None;
            }
            nowait(rw)
        }
        Work::Poll {
            fd,
            events,
            multi: false,
        } => {
            let mut p = libc::pollfd {
                fd,
                events,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no wait.
            let n = unsafe { libc::poll(&mut p, 1, 0) };
            (n > 0).then_some(i32::from(p.revents as u16))
        }
        _ => None,
    }
}

/// The system call of an I/O worker's job (a positional transfer, `fsync`): its result.
fn execute(job: &Job) -> i32 {
    match job.work {
        Work::Rw(rw) => rw.call(rw.off(), rw.flags),
        Work::Fsync { fd, datasync } => loop {
            // SAFETY: plain syscalls on a descriptor the ring keeps open while the
            // job lives (see `release_fd`).
            let r = unsafe {
                if datasync {
                    libc::fdatasync(fd)
                } else {
                    libc::fsync(fd)
                }
            };
            if r == 0 {
                break 0;
            }
            match errno() {
                libc::EINTR => continue,
                e => break -e,
            }
        },
        // Never queued for an I/O worker.
        Work::Poll { .. } => -libc::EINVAL,
    }
}

impl Shared {
    /// Queue a completion for the ring. Lock order: `st` (if held) before `cq`.
    fn post(&self, ud: u64, res: i32, flags: u32) {
        let mut cq = lock(&self.cq);
        cq.items.push_back((ud, res, flags));
        // Release, paired with the Acquire in `has_completions`: a ring woken by the
        // eventfd (signalled after this store) or by the condvar finds the count, so its
        // fast path does not skip this completion. The items themselves travel under the
        // lock.
        self.cq_len.store(cq.items.len(), Ordering::Release);
        if !cq.signalled {
            cq.signalled = true;
            efd_write(self.signal.as_raw_fd());
        }
        let wake = cq.want > 0 && cq.items.len() >= cq.want;
        drop(cq);
        // After unlocking: the ring, woken, takes the lock at once (notified under it, it
        // would wake only to sleep on the mutex). It checks the count under the lock, so a
        // notify that comes late is never lost.
        if wake {
            self.cq_cv.notify_one();
        }
    }

    /// Complete a retired job and its linked timeout.
    fn post_done(&self, ud: u64, res: i32, flags: u32, link: Option<u64>, link_res: i32) {
        self.post(ud, res, flags);
        if let Some(l) = link {
            self.post(l, link_res, 0);
        }
    }

    /// A thread's job is done: retire it and post its completion (nothing if it was
    /// retired meanwhile — impossible for a claimed job, checked all the same). Returns
    /// the state, still locked, to the thread's loop: it takes its next job (or counts
    /// itself idle) before the ring, which needs the lock to queue one, can think it
    /// busy and ask for another thread.
    fn finish(&self, job: &Job, res: i32, link_res: i32) -> MutexGuard<'_, State> {
        let mut st = lock(&self.st);
        if st.jobs.get(&job.ud).is_some_and(|l| l.seq == job.seq) {
            if let Some(live) = st.retire(job.ud) {
                self.post_done(job.ud, res, 0, live.link, link_res);
            }
        }
        st
    }

    fn finish_cancelled(&self, job: &Job, why: Why) -> MutexGuard<'_, State> {
        let link_res = match why {
            Why::Cancel => -libc::ECANCELED,
            Why::Deadline => -libc::ETIME,
        };
        self.finish(job, -libc::ECANCELED, link_res)
    }

    /// Queue the job of one SQE (and its linked timeout) for a thread. Returns the queue
    /// it joined (`STREAM` or `FILE`) if a thread of that kind idles there: one to wake
    /// ([`Threads::flush`]), unless the ring runs the job itself ([`Threads::wait`]).
    fn enqueue(
        &self,
        st: &mut State,
        ud: u64,
        work: Work,
        class: Option<FdClass>,
        link: Option<(u64, Option<Duration>)>,
    ) -> Option<usize> {
        let link_ud = link.map(|l| l.0);
        let stream = work.is_stream(class);
        // Past what an `Instant` holds: no deadline.
        let deadline = link
            .and_then(|(_, d)| d)
            .and_then(|d| Instant::now().checked_add(d));
        st.seq += 1;
        let seq = st.seq;
        // Stream threads enforce their own deadlines (their `poll` times out); the
        // manager enforces those of jobs waiting for an I/O worker.
        let timer = deadline.filter(|_| !stream);
        let live = Live {
            seq,
            phase: Phase::Queued,
            cancel: None,
            deadline,
            timer,
            link: link_ud,
            fd: Some(work.fd()),
            stream,
            rearmed: true,
        };
        match st.jobs.entry(ud) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(live);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                // The ring never has two operations with one `user_data` in flight;
                // posting for this one would complete the other while it runs. Refuse it
                // silently.
                debug_assert!(false, "user_data {ud:#x} submitted twice");
                return None;
            }
        }
        if let Some(when) = timer {
            st.arm_timer(when, seq, ud);
            self.manager_cv.notify_one();
        }
        *st.fd_users.entry(work.fd()).or_insert(0) += 1;
        let job = Job {
            ud,
            seq,
            work,
            unknown: class.is_none(),
        };
        let queue = if stream {
            &mut st.stream_q
        } else {
            &mut st.file_q
        };
        queue.push_back(job);
        if st.grow(stream, self.max_workers) {
            self.manager_cv.notify_one();
        }
        let (kind, idle) = if stream {
            (STREAM, st.idle_streamers)
        } else {
            (FILE, st.idle_workers)
        };
        (idle > 0).then_some(kind)
    }

    fn start_timeout(&self, st: &mut State, s: &Sqe) {
        let ud = s.user_data;
        // Only what the ring sends: a relative timer with no completion count.
        if s.off != 0 || s.op_flags != 0 {
            return self.post(ud, -libc::EINVAL, 0);
        }
        let after = match s.timespec() {
            Ok(d) => d,
            Err(e) => return self.post(ud, e, 0),
        };
        if st.jobs.contains_key(&ud) {
            debug_assert!(false, "user_data {ud:#x} submitted twice");
            return;
        }
        st.seq += 1;
        let seq = st.seq;
        // Past what an `Instant` holds: a timer that never fires (only a cancel ends it).
        let when = Instant::now().checked_add(after);
        if let Some(w) = when {
            st.arm_timer(w, seq, ud);
            self.manager_cv.notify_one();
        }
        st.jobs.insert(
            ud,
            Live {
                seq,
                phase: Phase::Timer,
                cancel: None,
                deadline: None,
                timer: when,
                link: None,
                fd: None,
                stream: false,
                rearmed: true,
            },
        );
    }

    /// An `ASYNC_CANCEL`: its own result.
    fn cancel_req(&self, st: &mut State, s: &Sqe) -> i32 {
        if s.op_flags & CANCEL_ANY != 0 {
            let all: Vec<u64> = st.jobs.keys().copied().collect();
            let found = all
                .iter()
                .filter(|&&ud| self.cancel_one(st, ud) != -libc::ENOENT);
            return match found.count() {
                0 => -libc::ENOENT,
                n => i32::try_from(n).unwrap_or(i32::MAX),
            };
        }
        if s.op_flags & !CANCEL_ALL != 0 {
            return -libc::EINVAL;
        }
        self.cancel_one(st, s.addr)
    }

    /// Cancel one operation: 0 when it is (or will be at once) cancelled, `-EALREADY` when
    /// it is in a system call that cannot be interrupted, `-ENOENT` when there is none.
    fn cancel_one(&self, st: &mut State, ud: u64) -> i32 {
        let Some(live) = st.jobs.get_mut(&ud) else {
            return -libc::ENOENT;
        };
        match live.phase {
            Phase::Queued | Phase::Timer => {
                if let Some(live) = st.retire(ud) {
                    self.post_done(ud, -libc::ECANCELED, 0, live.link, -libc::ECANCELED);
                }
                0
            }
            Phase::Blocked(wake) => {
                live.cancel.get_or_insert(Why::Cancel);
                efd_write(wake);
                0
            }
            Phase::Running => {
                // A stream transfer that finds nothing after this goes back to wait:
                // it sees the cancel then.
                if live.stream {
                    live.cancel.get_or_insert(Why::Cancel);
                }
                -libc::EALREADY
            }
        }
    }

    /// A timer came up: a `TIMEOUT` completes, a queued job's deadline cancels it.
    fn fire(&self, st: &mut State, t: TimerEntry) {
        let phase = match st.jobs.get_mut(&t.ud) {
            Some(l) if l.seq == t.seq && l.timer == Some(t.when) => {
                l.timer = None;
                l.phase
            }
            _ => return, // completed first
        };
        st.armed_timers -= 1;
        match phase {
            Phase::Timer => {
                st.retire(t.ud);
                self.post(t.ud, -libc::ETIME, 0);
            }
            Phase::Queued => {
                if let Some(live) = st.retire(t.ud) {
                    self.post_done(t.ud, -libc::ECANCELED, 0, live.link, -libc::ETIME);
                }
            }
            Phase::Running => {
                // In a system call that cannot be interrupted: it completes normally.
                if let Some(l) = st.jobs.get_mut(&t.ud).and_then(|l| l.link.take()) {
                    self.post(l, -libc::EALREADY, 0);
                }
            }
            Phase::Blocked(wake) => {
                if let Some(l) = st.jobs.get_mut(&t.ud) {
                    l.cancel.get_or_insert(Why::Deadline);
                }
                efd_write(wake);
            }
        }
    }

    /// Before a stream thread waits: `Err` if the job was cancelled or (after its first
    /// wait) its deadline has passed; else mark it blocked on `wake` and return its
    /// deadline and whether a multishot poll may post again.
    fn block(
        &self,
        job: &Job,
        wake: RawFd,
        first: bool,
    ) -> std::result::Result<(Option<Instant>, bool), Why> {
        let mut st = lock(&self.st);
        let Some(live) = st.jobs.get_mut(&job.ud) else {
            return Err(Why::Cancel);
        };
        if let Some(why) = live.cancel {
            return Err(why);
        }
        if !first && live.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Why::Deadline);
        }
        live.phase = Phase::Blocked(wake);
        Ok((live.deadline, live.rearmed))
    }

    /// After a stream thread's wait: back to `Running`; why it must stop, if it must.
    fn unblock(&self, job: &Job) -> Option<Why> {
        let mut st = lock(&self.st);
        let live = st.jobs.get_mut(&job.ud)?;
        live.phase = Phase::Running;
        live.cancel
    }

    /// An I/O worker's job.
    fn run_file(&self, job: &Job) -> MutexGuard<'_, State> {
        self.finish(job, execute(job), -libc::ECANCELED)
    }

    /// A stream thread's job.
    fn run_stream(&self, job: &Job, wake: RawFd) -> MutexGuard<'_, State> {
        match job.work {
            // (Registered descriptors are classified once, at registration: no `fstat` per
            // job for them.)
            Work::Rw(rw) if job.unknown && seekable(rw.fd) => {
                // A file at its position (`write_cursor`) the ring did not describe:
                // always ready, never polled.
                let r = rw.call(-1, rw.flags);
                self.finish(job, r, -libc::ECANCELED)
            }
            Work::Rw(rw) => self.stream_rw(job, rw, wake),
            Work::Poll { fd, events, multi } => self.stream_poll(job, fd, events, multi, wake),
            Work::Fsync { .. } => self.run_file(job),
        }
    }

    fn stream_rw(&self, job: &Job, rw: Rw, wake: RawFd) -> MutexGuard<'_, State> {
        let events = if rw.write {
            libc::POLLOUT
        } else {
            libc::POLLIN
        };
        let mut first = true;
        let mut nowait = true;
        // The descriptor to call when `RWF_NOWAIT` is refused (see below).
        let mut twin: Option<OwnedFd> = None;
        let mut misses = 0u32;
        loop {
            let deadline = match self.block(job, wake, first) {
                Ok((d, _)) => d,
                Err(why) => return self.finish_cancelled(job, why),
            };
            // A deadline already passed still gets one look (`poll` with no wait): a
            // zero deadline takes what is there, as io_uring's zero linked timeout does.
            let ready = wait_ready(rw.fd, events, wake, deadline);
            first = false;
            if let Some(why) = self.unblock(job) {
                return self.finish_cancelled(job, why);
            }
            match ready {
                Err(e) => return self.finish(job, -e, -libc::ECANCELED),
                Ok(0) => continue,
                Ok(_) => {}
            }
            let mut r = if nowait {
                rw.call(-1, rw.flags | libc::RWF_NOWAIT)
            } else {
                rw.call_on(twin.as_ref().map_or(rw.fd, |t| t.as_raw_fd()), -1, rw.flags)
            };
            if r == -libc::EOPNOTSUPP && nowait {
                // Not a file that transfers without blocking on request (a tty, a FIFO
                // opened by path). A plain call could block for good — another reader took
                // the data `poll` saw, a write wants more room than there is — out of reach
                // of cancel, deadline and drop. So call a non-blocking twin: the same FIFO
                // or tty opened again, with `O_NONBLOCK` on its own open file description
                // (the caller's descriptor is untouched); it answers `EAGAIN` instead.
                // Where there is none (a pty master: opening it again makes a new pty), the
                // plain call it is.
                nowait = false;
                twin = nonblocking_twin(rw.fd);
                r = rw.call_on(twin.as_ref().map_or(rw.fd, |t| t.as_raw_fd()), -1, rw.flags);
            }
            if r == -libc::EAGAIN {
                // Someone else took the data (or the room): wait again.
                misses += 1;
                if misses > SPURIOUS {
                    std::thread::sleep(Duration::from_millis(1));
                }
                continue;
            }
            return self.finish(job, r, -libc::ECANCELED);
        }
    }

    fn stream_poll(
        &self,
        job: &Job,
        fd: RawFd,
        events: i16,
        multi: bool,
        wake: RawFd,
    ) -> MutexGuard<'_, State> {
        let mut first = true;
        loop {
            let (deadline, armed) = match self.block(job, wake, first) {
                Ok(b) => b,
                Err(why) => return self.finish_cancelled(job, why),
            };
            // A multishot poll whose last completion the ring has not routed yet waits
            // for that (its own eventfd) rather than post again for the same readiness.
            let ready = wait_ready(if armed { fd } else { -1 }, events, wake, deadline);
            first = false;
            if let Some(why) = self.unblock(job) {
                return self.finish_cancelled(job, why);
            }
            let rev = match ready {
                Err(e) => return self.finish(job, -e, -libc::ECANCELED),
                Ok(0) => continue,
                Ok(rev) => i32::from(rev as u16),
            };
            if !multi {
                return self.finish(job, rev, -libc::ECANCELED);
            }
            let mut st = lock(&self.st);
            if let Some(live) = st.jobs.get_mut(&job.ud) {
                live.rearmed = false;
                self.post(job.ud, rev, CQE_F_MORE);
            }
        }
    }

    /// A thread could not be started: give its place back; if no thread of its kind is
    /// left to run the queue, fail what waits there with `-EAGAIN`.
    fn spawn_failed(&self, st: &mut State, stream: bool) {
        let (total, queue) = if stream {
            st.starting_streamers -= 1;
            st.streamers -= 1;
            (st.streamers, &mut st.stream_q)
        } else {
            st.starting_workers -= 1;
            st.workers -= 1;
            (st.workers, &mut st.file_q)
        };
        if total > 0 {
            return;
        }
        let jobs: Vec<Job> = queue.drain(..).collect();
        for job in jobs {
            if st.jobs.get(&job.ud).is_some_and(|l| l.seq == job.seq) {
                if let Some(live) = st.retire(job.ud) {
                    self.post_done(job.ud, -libc::EAGAIN, 0, live.link, -libc::ECANCELED);
                }
            }
        }
    }

    /// Start the threads asked for (the manager, without the state lock).
    fn spawn(self: &Arc<Self>, workers: usize, streamers: usize) {
        let builder = |name: &str| {
            std::thread::Builder::new()
                .name(name.into())
                .stack_size(STACK)
        };
        for _ in 0..workers {
            let sh = self.clone();
            if builder("iocomplete-io")
                .spawn(move || sh.file_worker())
                .is_err()
            {
                self.spawn_failed(&mut lock(&self.st), false);
            }
        }
        for _ in 0..streamers {
            let sh = self.clone();
            let started = eventfd().and_then(|wake| {
                builder("iocomplete-stream")
                    .spawn(move || sh.stream_worker(wake))
                    .map_err(|e| Error::from_io(&e))
            });
            if started.is_err() {
                self.spawn_failed(&mut lock(&self.st), true);
            }
        }
    }

    fn file_worker(&self) {
        let mut st = lock(&self.st);
        st.starting_workers -= 1;
        loop {
            if st.shutdown {
                st.workers -= 1;
                return;
            }
            if let Some(job) = st.file_q.pop_front() {
                if !st.claim(&job) {
                    continue; // cancelled or timed out while queued
                }
                drop(st);
                st = self.run_file(&job);
                continue;
            }
            st.idle_workers += 1;
            st = self
                .file_cv
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
            st.idle_workers -= 1;
        }
    }

    fn stream_worker(&self, wake: OwnedFd) {
        let mut st = lock(&self.st);
        st.starting_streamers -= 1;
        loop {
            if st.shutdown {
                st.streamers -= 1;
                return;
            }
            if let Some(job) = st.stream_q.pop_front() {
                if !st.claim(&job) {
                    continue;
                }
                drop(st);
                // Wake-ups meant for this thread's previous job were all written while
                // that job was blocked (under the lock), so they are in the counter now.
                efd_clear(wake.as_raw_fd());
                st = self.run_stream(&job, wake.as_raw_fd());
                continue;
            }
            st.idle_streamers += 1;
            let (g, t) = self
                .stream_cv
                .wait_timeout(st, STREAM_IDLE)
                .unwrap_or_else(PoisonError::into_inner);
            st = g;
            st.idle_streamers -= 1;
            if t.timed_out() && st.stream_q.is_empty() {
                st.streamers -= 1;
                return;
            }
        }
    }

    /// The manager thread: starts the threads the others ask for (so the ring's thread
    /// never allocates for one) and fires timers.
    fn manager(self: &Arc<Self>) {
        let mut st = lock(&self.st);
        loop {
            if st.shutdown {
                return;
            }
            if st.spawn_workers + st.spawn_streamers > 0 {
                let workers = std::mem::take(&mut st.spawn_workers);
                let streamers = std::mem::take(&mut st.spawn_streamers);
                drop(st);
                self.spawn(workers, streamers);
                st = lock(&self.st);
                continue;
            }
            let now = Instant::now();
            let next = st.timers.peek().map(|Reverse(t)| t.when);
            st = match next {
                Some(when) if when <= now => {
                    if let Some(Reverse(t)) = st.timers.pop() {
                        self.fire(&mut st, t);
                    }
                    st
                }
                Some(when) => {
                    self.manager_cv
                        .wait_timeout(st, when - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .manager_cv
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

/// Index in [`Threads::unwoken`] of jobs for the I/O workers.
const FILE: usize = 0;
/// Index in [`Threads::unwoken`] of jobs for the stream threads.
const STREAM: usize = 1;

/// The thread-pool backend of one ring (see the module docs).
pub(crate) struct Threads {
    sh: Arc<Shared>,
    /// The ring's targets, by descriptor (only the ring's thread uses this).
    classes: HashMap<RawFd, FdClass>,
    /// Idle threads to wake, per queue, for jobs queued since the last [`flush`]
    /// (`Threads::flush`): io_uring starts what was submitted at the next enter, so does
    /// this backend — and a ring that then waits for the one job it queued runs it itself
    /// instead (see [`wait`](Threads::wait)).
    unwoken: [usize; 2],
}

impl Threads {
    /// A backend of at most `workers` I/O workers, with room for `ops` operations in
    /// flight and `cq_entries` completions before its tables grow. Its manager thread
    /// starts now; the others as work arrives.
    pub(crate) fn new(workers: usize, ops: usize, cq_entries: usize) -> Result<Threads> {
        let ops = ops.min(1 << 16);
        let mut st = State::default();
        // Twice the room: a table kept at most half full never reallocates to clear the
        // tombstones that removals leave (it rehashes in place).
        st.jobs.reserve(ops * 2);
        st.file_q.reserve(ops.min(1024));
        st.stream_q.reserve(ops.min(64));
        st.timers.reserve(ops.min(64));
        st.fd_users.reserve(64);
        let sh = Arc::new(Shared {
            st: Mutex::new(st),
            file_cv: Condvar::new(),
            stream_cv: Condvar::new(),
            manager_cv: Condvar::new(),
            cq: Mutex::new(Cq {
                items: VecDeque::with_capacity(cq_entries),
                signalled: false,
                want: 0,
            }),
            cq_cv: Condvar::new(),
            cq_len: AtomicUsize::new(0),
            signal: eventfd()?,
            max_workers: workers.clamp(1, MAX_WORKERS),
        });
        let m = sh.clone();
        std::thread::Builder::new()
            .name("iocomplete-mgr".into())
            .stack_size(STACK)
            .spawn(move || m.manager())
            .map_err(|e| Error::from_io(&e))?;
        Ok(Threads {
            sh,
            classes: HashMap::with_capacity_and_hasher(64, Default::default()),
            unwoken: [0; 2],
        })
    }

    /// Start these SQEs, in order. A `LINK_TIMEOUT` right after an `IOSQE_IO_LINK` entry
    /// becomes that operation's deadline. Never fails: a bad entry completes with an
    /// error, as the kernel's would.
    ///
    /// What completes here, on the ring's thread (`NOP`, a malformed entry, a transfer
    /// done at submission), goes straight to `done`, the ring's copied-out completions:
    /// no lock, no eventfd. Threads are woken for the rest at the next [`flush`] (or
    /// [`wait`]).
    ///
    /// [`flush`]: Threads::flush
    /// [`wait`]: Threads::wait
    pub(crate) fn submit(&mut self, sqes: &[squeue::Entry], done: &mut VecDeque<(u64, i32, u32)>) {
        let sh = &self.sh;
        let complete = |done: &mut VecDeque<(u64, i32, u32)>, ud, res, link: Option<u64>| {
            done.push_back((ud, res, 0));
            if let Some(l) = link {
                done.push_back((l, -libc::ECANCELED, 0));
            }
        };
        // Taken when a job is queued; released around the attempts at submission, so
        // workers finishing meanwhile never wait for a copy out of the page cache.
        let mut st: Option<MutexGuard<'_, State>> = None;
        let mut i = 0;
        while i < sqes.len() {
            let s = Sqe::read(&sqes[i]);
            i += 1;
            let mut link = None;
            if s.flags & IOSQE_IO_LINK != 0 {
                if let Some(t) = sqes.get(i).map(Sqe::read) {
                    if t.opcode == opcode::LinkTimeout::CODE {
                        i += 1;
                        // A malformed timespec: the timeout fails, the operation has no
                        // deadline. (The ring only sends well-formed ones.)
                        let d = t.timespec();
                        if let Err(e) = d {
                            done.push_back((t.user_data, e, 0));
                        }
                        link = d.ok().map(|d| (t.user_data, Some(d)));
                    }
                }
            }
            let ud = s.user_data;
            let link_ud = link.map(|l| l.0);
            match s.decode() {
                Decoded::Done(res) => complete(done, ud, res, link_ud),
                Decoded::Cancel => {
                    // Through the shared queue, like the completions it causes: the
                    // target's completes no later than the cancel's own.
                    let st = st.get_or_insert_with(|| lock(&sh.st));
                    let r = sh.cancel_req(st, &s);
                    sh.post_done(ud, r, 0, link_ud, -libc::ECANCELED);
                }
                Decoded::Timeout => {
                    let st = st.get_or_insert_with(|| lock(&sh.st));
                    sh.start_timeout(st, &s);
                }
                Decoded::Work(work) => {
                    let class = self.classes.get(&work.fd()).copied();
                    if inline_candidate(&work, class) {
                        st = None;
                        if let Some(res) = inline(&work, class) {
                            complete(done, ud, res, link_ud);
                            continue;
                        }
                    }
                    let st = st.get_or_insert_with(|| lock(&sh.st));
                    if let Some(kind) = sh.enqueue(st, ud, work, class, link) {
                        // At most one wake-up per idle thread (a spare one costs a
                        // system call).
                        let idle = [st.idle_workers, st.idle_streamers][kind];
                        if self.unwoken[kind] < idle {
                            self.unwoken[kind] += 1;
                        }
                    }
                }
            }
        }
    }

    /// Jobs queued for threads not woken yet (see [`flush`](Threads::flush)).
    pub(crate) fn unwoken(&self) -> usize {
        self.unwoken.iter().sum()
    }

    /// Wake the idle threads the jobs queued since the last call need (the ring's
    /// `io_uring_enter`). Without the state lock: a thread checks its queue under the lock
    /// before it sleeps, so a wake-up that finds it busy is not needed.
    pub(crate) fn flush(&mut self) {
        for _ in 0..std::mem::take(&mut self.unwoken[FILE]) {
            self.sh.file_cv.notify_one();
        }
        for _ in 0..std::mem::take(&mut self.unwoken[STREAM]) {
            self.sh.stream_cv.notify_one();
        }
    }

    /// Whether completions are waiting (cheap; may lag a completion just posted).
    pub(crate) fn has_completions(&self) -> bool {
        // Acquire: see `Shared::post`.
        self.sh.cq_len.load(Ordering::Acquire) > 0
    }

    /// Move up to `max` completions, oldest first, to `out`. The descriptor stops polling
    /// readable once none is left.
    pub(crate) fn fill(&self, out: &mut VecDeque<(u64, i32, u32)>, max: usize) -> usize {
        if !self.has_completions() {
            // Nothing posted (the count is stored under the lock after each change, so a
            // completion this misses is found by the ring's next reap).
            return 0;
        }
        let mut cq = lock(&self.sh.cq);
        let n = cq.items.len().min(max);
        out.extend(cq.items.drain(..n));
        if cq.items.is_empty() && cq.signalled {
            // Under the lock, like the write in `post`: the eventfd holds a count exactly
            // while completions wait.
            cq.signalled = false;
            efd_clear(self.sh.signal.as_raw_fd());
        }
        // Under the lock; Release as in `Shared::post`.
        self.sh.cq_len.store(cq.items.len(), Ordering::Release);
        n
    }

    /// Wait until `want` completions are queued, or `timeout` passes (`None`: no limit;
    /// one past what an `Instant` holds: no limit either). Returns at once if `done` (the
    /// ring's copied-out completions) holds any.
    ///
    /// A ring that waits with no time limit for the only operation it has in flight, a
    /// file job nobody has started, runs it on its own thread and puts its completion in
    /// `done`: what a worker would do, without the two thread hand-offs (wake a worker,
    /// wake the ring) that would otherwise cost more than a fast device's read. Nothing
    /// else can complete meanwhile — no other operation is live, no handle can wake the
    /// ring (its wake-up poll would be live), no deadline is set — so the wait ends no
    /// later than it would have.
    pub(crate) fn wait(
        &mut self,
        want: usize,
        timeout: Option<Duration>,
        done: &mut VecDeque<(u64, i32, u32)>,
    ) {
        if !done.is_empty() {
            self.flush();
            return;
        }
        if timeout.is_none() && self.run_only_job(done) {
            return;
        }
        self.flush();
        let deadline = timeout.map(|t| Instant::now().checked_add(t));
        let mut cq = lock(&self.sh.cq);
        while cq.items.len() < want {
            cq.want = want;
            cq = match deadline {
                Some(Some(d)) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    self.sh
                        .cq_cv
                        .wait_timeout(cq, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                _ => self
                    .sh
                    .cq_cv
                    .wait(cq)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
        cq.want = 0;
    }

    /// The caller-runs case of [`wait`](Threads::wait): whether it ran a job.
    fn run_only_job(&mut self, done: &mut VecDeque<(u64, i32, u32)>) -> bool {
        let sh = &self.sh;
        let mut st = lock(&sh.st);
        if st.jobs.len() != 1 || st.file_q.len() != 1 || sh.cq_len.load(Ordering::Acquire) > 0 {
            return false;
        }
        let Some(job) = st.file_q.pop_front() else {
            return false;
        };
        let alone = st.jobs.get(&job.ud).is_some_and(|l| l.deadline.is_none());
        if !alone || !st.claim(&job) {
            st.file_q.push_front(job);
            return false;
        }
        drop(st);
        // The worker that would have been woken for it is not needed.
        self.unwoken = [0; 2];
        let res = execute(&job);
        let mut st = lock(&sh.st);
        // Still this job: nothing but this thread (busy here) could complete it.
        if st.jobs.get(&job.ud).is_some_and(|l| l.seq == job.seq) {
            if let Some(live) = st.retire(job.ud) {
                done.push_back((job.ud, res, 0));
                if let Some(l) = live.link {
                    done.push_back((l, -libc::ECANCELED, 0));
                }
            }
        }
        true
    }

    /// The ring has routed the last completion of multishot poll `ud` (after clearing
    /// whatever it signalled): it may post again.
    pub(crate) fn rearm(&self, ud: u64) {
        let mut st = lock(&self.sh.st);
        if let Some(live) = st.jobs.get_mut(&ud) {
            live.rearmed = true;
            if let Phase::Blocked(wake) = live.phase {
                efd_write(wake);
            }
        }
    }

    /// The ring registered a target.
    pub(crate) fn add_fd(&mut self, fd: RawFd, class: FdClass) {
        self.classes.insert(fd, class);
    }

    /// The ring closed a target: close its descriptor now, or when the last operation
    /// using it completes (until then its number cannot be reused under a worker).
    pub(crate) fn release_fd(&mut self, fd: OwnedFd) {
        self.classes.remove(&fd.as_raw_fd());
        let mut st = lock(&self.sh.st);
        if st.fd_users.contains_key(&fd.as_raw_fd()) {
            st.deferred.push(fd);
        } else {
            drop(st);
            drop(fd);
        }
    }
}

/// The FIFO or tty behind `fd` opened again (through `/proc/self/fd`) with the same access
/// mode plus `O_NONBLOCK`: the same pipe buffer or terminal, on an open file description of
/// its own, so `O_NONBLOCK` there changes nothing for the caller's descriptor. `None` for
/// anything else, and for a pty master (`/dev/ptmx`, char 5:2: opening it again makes a
/// new pty).
fn nonblocking_twin(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: fstat writes one `stat` into valid memory; the result is checked.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    let kind = st.st_mode & libc::S_IFMT;
    let ptmx =
        kind == libc::S_IFCHR && libc::major(st.st_rdev) == 5 && libc::minor(st.st_rdev) == 2;
    // SAFETY: isatty only inspects the descriptor.
    let tty = kind == libc::S_IFCHR && unsafe { libc::isatty(fd) } == 1;
    if ptmx || !(kind == libc::S_IFIFO || tty) {
        return None;
    }
    // SAFETY: F_GETFL takes no pointer.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 {
        return None;
    }
    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).ok()?;
    let flags = (fl & libc::O_ACCMODE) | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated path; the result is checked.
    let twin = unsafe { libc::open(path.as_ptr(), flags) };
    // SAFETY: a fresh descriptor owned by nobody else.
    (twin >= 0).then(|| unsafe { OwnedFd::from_raw_fd(twin) })
}

impl AsFd for Threads {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sh.signal.as_fd()
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        // The ring has cancelled and drained everything it could (`shutdown_drain`).
        // Threads exit once their current system call returns; anything still waiting is
        // woken (its completion goes nowhere: the ring gave up on it and leaked its
        // buffers).
        let mut st = lock(&self.sh.st);
        st.shutdown = true;
        for live in st.jobs.values_mut() {
            if let Phase::Blocked(wake) = live.phase {
                live.cancel.get_or_insert(Why::Cancel);
                efd_write(wake);
            }
        }
        drop(st);
        self.sh.file_cv.notify_all();
        self.sh.stream_cv.notify_all();
        self.sh.manager_cv.notify_all();
    }
}
