//! The interpreter of the SQE ABI: what an entry asks for, and the system calls that do it.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue};

use crate::error::{Error, Result};
use crate::ring::probe::{OP_READV_FIXED, OP_WRITEV_FIXED};

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
pub(super) const IOSQE_IO_LINK: u8 = 1 << 2;
/// `IORING_POLL_ADD_MULTI` (in the SQE's `len`).
const POLL_ADD_MULTI: u32 = 1;
/// `IORING_ASYNC_CANCEL_ALL`.
pub(super) const CANCEL_ALL: u32 = 1;
/// `IORING_ASYNC_CANCEL_ANY`.
pub(super) const CANCEL_ANY: u32 = 4;
/// `IORING_FSYNC_DATASYNC`.
const FSYNC_DATASYNC: u32 = 1;
/// `IORING_CQE_F_MORE`.
pub(super) const CQE_F_MORE: u32 = 2;

pub(super) fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The fields of an SQE this backend reads.
#[derive(Clone, Copy)]
pub(super) struct Sqe {
    pub(super) opcode: u8,
    pub(super) flags: u8,
    fd: i32,
    pub(super) off: u64,
    pub(super) addr: u64,
    len: u32,
    pub(super) op_flags: u32,
    pub(super) user_data: u64,
}

impl Sqe {
    pub(super) fn read(e: &squeue::Entry) -> Sqe {
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
    /// `LINK_TIMEOUT`); `Err(-EINVAL)` for a malformed one, `Err(-EFAULT)` for none.
    pub(super) fn timespec(&self) -> std::result::Result<Duration, i32> {
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
pub(super) struct Rw {
    pub(super) write: bool,
    pub(super) fd: RawFd,
    mem: Mem,
    off: u64,
    pub(super) flags: i32,
}

impl Rw {
    /// One `preadv2`/`pwritev2` at `off` (`-1`: the file's position) with `flags`; the
    /// byte count or `-errno`.
    pub(super) fn call(&self, off: i64, flags: i32) -> i32 {
        self.call_on(self.fd, off, flags)
    }

    /// [`call`](Self::call) on another descriptor of the same file (a non-blocking twin,
    /// see `nonblocking_twin`).
    pub(super) fn call_on(&self, fd: RawFd, off: i64, flags: i32) -> i32 {
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
    pub(super) fn off(&self) -> i64 {
        // The ring checked `off + len <= i64::MAX` for positional transfers.
        i64::try_from(self.off).unwrap_or(-1)
    }

    fn at_cursor(&self) -> bool {
        self.off == u64::MAX
    }
}

/// What an SQE asks for.
pub(super) enum Decoded {
    /// Done at once, with this result (`NOP`, a malformed entry).
    Done(i32),
    /// Work for a thread (unless it completes at submission).
    Work(Work),
    Cancel,
    Timeout,
}

impl Sqe {
    pub(super) fn decode(&self) -> Decoded {
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
pub(super) enum Work {
    Rw(Rw),
    Fsync { fd: RawFd, datasync: bool },
    Poll { fd: RawFd, events: i16, multi: bool },
}

impl Work {
    pub(super) fn fd(&self) -> RawFd {
        match *self {
            Work::Rw(rw) => rw.fd,
            Work::Fsync { fd, .. } | Work::Poll { fd, .. } => fd,
        }
    }

    /// Whether it may wait for another party (a stream thread's job), given what the
    /// ring said of its descriptor.
    pub(super) fn is_stream(&self, class: Option<FdClass>) -> bool {
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

pub(super) fn eventfd() -> Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::last_os());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn efd_write(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd; a full counter (EAGAIN)
    // already signals.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

pub(super) fn efd_clear(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64 from an eventfd; EAGAIN (zero) is fine.
    let _ = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

/// Whether `fd` is a regular file or a block device (always ready: never polled).
pub(super) fn seekable(fd: RawFd) -> bool {
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
pub(super) fn wait_ready(
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
pub(super) fn inline_candidate(work: &Work, class: Option<FdClass>) -> bool {
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
/// takes the data (or room) already there, a positional transfer of a buffered file is
/// done if the page cache can serve it whole, a poll reports readiness already there —
/// all with `RWF_NOWAIT` or a zero timeout, so this never blocks. The result, or `None`
/// to queue the job.
pub(super) fn inline(work: &Work, class: Option<FdClass>) -> Option<i32> {
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

/// The FIFO or tty behind `fd` opened again (through `/proc/self/fd`) with the same access
/// mode plus `O_NONBLOCK`: the same pipe buffer or terminal, on an open file description of
/// its own, so `O_NONBLOCK` there changes nothing for the caller's descriptor. `None` for
/// anything else, and for a pty master (`/dev/ptmx`, char 5:2: opening it again makes a
/// new pty).
pub(super) fn nonblocking_twin(fd: RawFd) -> Option<OwnedFd> {
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
