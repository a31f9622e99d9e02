//! Targets: file descriptors registered with a ring, with what the ring needs to know
//! about them (kind, access mode, direct-I/O alignment, size) read once at registration,
//! so every request can be validated without a syscall; and what the kernel and sysfs say
//! about files and block devices in general ([`MAX_TRANSFER`], [`addressable`],
//! [`block_device_limits`]).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};

mod sysfs;

pub(crate) use sysfs::storage_of;
pub use sysfs::{block_device_limits, default_max_chunk, BlockLimits};

/// Largest transfer the kernel moves in one `readv`/`writev` (`MAX_RW_COUNT`, `INT_MAX`
/// rounded down to a page): also the largest byte count a CQE can report.
pub const MAX_TRANSFER: u64 = 0x7fff_f000;

/// Which way the bytes move. For a split or DMA transfer it decides what a 0-byte
/// completion means: end of file on a read, a failure on a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the device into memory.
    Read,
    /// From memory to the device.
    Write,
}

/// Whether `len` bytes at `offset` lie within the offsets a file or block device can
/// address (`loff_t`: up to 2⁶³ − 1). The kernel fails anything past that with `EINVAL`.
/// Checked by the drivers before anything reaches the kernel.
pub(crate) fn addressable(offset: u64, len: u64) -> bool {
    offset
        .checked_add(len)
        .is_some_and(|end| i64::try_from(end).is_ok())
}

pub use crate::error::FdKind;

/// Facts about a target, read once when it is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdInfo {
    /// The file's kind.
    pub kind: FdKind,
    /// Opened with `O_DIRECT`.
    pub direct: bool,
    /// Opened with `O_NONBLOCK`.
    pub nonblocking: bool,
    /// Opened with `O_APPEND`: every write lands at the end of the file, whatever its
    /// offset.
    pub append: bool,
    /// Opened for reading.
    pub readable: bool,
    /// Opened for writing.
    pub writable: bool,
    /// Required alignment of file offsets and lengths for direct I/O (1 when the target
    /// is not direct).
    pub offset_align: u32,
    /// Required alignment of memory addresses for direct I/O (1 when not direct).
    pub mem_align: u32,
    /// Size in bytes, for files and block devices (0 otherwise). Read at registration.
    pub size: u64,
    /// `st_rdev` for devices (to find sysfs queue limits), 0 otherwise.
    pub rdev: u64,
    /// `st_dev` and `st_ino`: the file's identity (two targets with the same pair are the
    /// same file, whatever the paths they were opened by).
    pub dev_ino: (u64, u64),
}

impl FdInfo {
    /// Direct-I/O rules, checked before anything reaches the kernel: on a target opened
    /// `O_DIRECT`, the file offset (seekable targets), the length and the memory address
    /// must be multiples of the device's alignments. Errors name the first misaligned
    /// quantity (`"offset"`, `"length"`, `"buffer"`).
    pub(crate) fn check_direct(&self, offset: u64, len: u64, addr: u64) -> Result<()> {
        if !self.direct {
            return Ok(());
        }
        let misaligned =
            |what, value, align| Error::new(crate::ErrorKind::Misaligned { what, value, align });
        let oa = u64::from(self.offset_align);
        if self.kind.is_seekable() && offset % oa != 0 {
            return Err(misaligned("offset", offset, self.offset_align));
        }
        if len % oa != 0 {
            return Err(misaligned("length", len, self.offset_align));
        }
        if addr % u64::from(self.mem_align) != 0 {
            return Err(misaligned("buffer", addr, self.mem_align));
        }
        Ok(())
    }

    /// A positional write on a file opened `O_APPEND` lands at the end of the file
    /// whatever its offset (Linux's `pwrite` behaviour): refused, so an offset is never
    /// silently ignored. [`Op::write_cursor`](super::Op::write_cursor) appends there.
    pub(crate) fn check_positional_write(&self) -> Result<()> {
        if self.append && self.kind.is_seekable() {
            return Err(Error::new(crate::ErrorKind::AppendOnly));
        }
        Ok(())
    }

    /// Whether `other` is the same file: the same inode, or the same block device through
    /// another node.
    pub fn same_file(&self, other: &FdInfo) -> bool {
        self.dev_ino == other.dev_ino
            || (self.kind == FdKind::BlockDevice
                && other.kind == FdKind::BlockDevice
                && self.rdev == other.rdev)
    }

    /// The SQE offset for a transfer of `len` bytes at `offset`: the offset itself on
    /// seekable targets, where `offset + len` must not pass `i64::MAX` (the kernel's
    /// `loff_t`; `u64::MAX` would read as `-1`, "the current position", and turn
    /// positional I/O into streaming I/O); `-1` on streams, which ignore offsets.
    pub(crate) fn sqe_offset(&self, offset: u64, len: u64) -> Result<u64> {
        if !self.kind.is_seekable() {
            return Ok(u64::MAX);
        }
        match offset.checked_add(len) {
            Some(end) if end <= i64::MAX as u64 => Ok(offset),
            _ => Err(Error::new(crate::ErrorKind::OffsetOutOfRange {
                offset,
                len,
            })),
        }
    }
}

/// `_IOR(0x12, 114, size_t)`: the size of a block device in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl FdInfo {
    /// Inspect `fd` (fstat, fcntl, statx, ioctl).
    pub fn probe(fd: RawFd) -> Result<FdInfo> {
        // SAFETY: `stat` is plain old data; all-zero is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid out-pointer; a bad fd makes fstat fail with EBADF.
        if unsafe { libc::fstat(fd, &mut st) } < 0 {
            return Err(Error::last_os());
        }
        // SAFETY: F_GETFL takes no argument.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if fl < 0 {
            return Err(Error::last_os());
        }
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => FdKind::File,
            libc::S_IFBLK => FdKind::BlockDevice,
            libc::S_IFIFO => FdKind::Pipe,
            libc::S_IFSOCK => FdKind::Socket,
            libc::S_IFDIR => FdKind::Directory,
            // SAFETY: isatty only inspects the fd.
            libc::S_IFCHR if unsafe { libc::isatty(fd) } == 1 => FdKind::Tty,
            libc::S_IFCHR => FdKind::CharDevice,
            _ => FdKind::Other,
        };
        // An `O_PATH` descriptor reads as `O_RDONLY` but allows no I/O at all.
        let path_only = fl & libc::O_PATH != 0;
        let acc = if path_only { -1 } else { fl & libc::O_ACCMODE };
        let direct = fl & libc::O_DIRECT != 0;
        let mut info = FdInfo {
            kind,
            direct,
            nonblocking: fl & libc::O_NONBLOCK != 0,
            append: fl & libc::O_APPEND != 0,
            readable: acc == libc::O_RDONLY || acc == libc::O_RDWR,
            writable: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            offset_align: 1,
            mem_align: 1,
            size: 0,
            rdev: if kind == FdKind::BlockDevice {
                st.st_rdev
            } else {
                0
            },
            dev_ino: (st.st_dev, st.st_ino),
        };
        match kind {
            FdKind::File => info.size = st.st_size as u64,
            FdKind::BlockDevice => {
                let mut sz: u64 = 0;
                // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
                if unsafe { libc::ioctl(fd, BLKGETSIZE64 as _, &mut sz) } == 0 {
                    info.size = sz;
                }
            }
            _ => {}
        }
        if direct {
            let (off, mem) = dio_align(fd, kind);
            info.offset_align = off;
            info.mem_align = mem;
        }
        Ok(info)
    }
}

/// Direct-I/O alignment (offset/length, memory) from statx `STATX_DIOALIGN`, falling
/// back to the logical block size (block devices) or 512.
fn dio_align(fd: RawFd, kind: FdKind) -> (u32, u32) {
    // SAFETY: `statx` is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: empty path with AT_EMPTY_PATH stats `fd` itself; `stx` is a valid out-pointer.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0 && stx.stx_dio_offset_align != 0 {
        return (stx.stx_dio_offset_align, stx.stx_dio_mem_align.max(1));
    }
    if kind == FdKind::BlockDevice {
        let mut ssz: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer.
        if unsafe { libc::ioctl(fd, libc::BLKSSZGET as _, &mut ssz) } == 0 && ssz > 0 {
            return (ssz as u32, ssz as u32);
        }
    }
    (512, 512)
}

/// A file descriptor registered with a [`Ring`](super::Ring): a small `Copy` token.
///
/// Made by [`Ring::register`](super::Ring::register); valid until
/// [`Ring::close`](super::Ring::close). A request on a closed target, or on a target of
/// another ring, completes with [`ErrorKind::StaleTarget`](crate::ErrorKind::StaleTarget)
/// without reaching the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub(crate) ring: u32,
    pub(crate) index: u32,
    pub(crate) gen: u32,
}

/// The ring's record of a registered target.
#[derive(Debug)]
pub(crate) struct TargetEntry {
    pub(crate) gen: u32,
    pub(crate) fd: OwnedFd,
    pub(crate) info: FdInfo,
    /// Index in the kernel's registered-file table, when registration succeeded.
    pub(crate) fixed: Option<u32>,
}

impl TargetEntry {
    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether a read would find something right now (data, end of file or an error):
    /// `poll(2)` for `POLLIN` with a zero timeout — no ring operation, no timer. `None`
    /// when the call fails (it does not, short of `EINTR` or `ENOMEM`).
    pub(crate) fn readable_now(&self) -> Option<bool> {
        let mut p = libc::pollfd {
            fd: self.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid `pollfd` (count 1), a zero timeout; the descriptor is this
        // entry's own, open as long as the entry.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        // Any event means a read returns at once: POLLIN data, POLLHUP end of file,
        // POLLERR / POLLNVAL an error.
        (n >= 0).then_some(n > 0 && p.revents != 0)
    }
}
