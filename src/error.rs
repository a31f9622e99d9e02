//! One error type for the whole crate.
//!
//! [`Error`] is a small `Copy` value: no allocation, no strings built at run time. Match on
//! [`Error::kind`] to tell cases apart; numbers (offsets, alignments, errno values) are
//! carried in the [`ErrorKind`] variants. Every error converts into [`std::io::Error`].

use std::fmt;
use std::io;

/// What went wrong, with the numbers that explain it.
///
/// The enum is `#[non_exhaustive]`: match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The operation was cancelled before it finished (explicit cancel, `stop()`, or the
    /// ring shutting down).
    Cancelled,
    /// The operation's deadline expired before it finished.
    TimedOut,
    /// The ring was dropped and the kernel did not return the operation within the drop's
    /// grace period (10 s after cancelling it; a device that never answers) — or at once,
    /// when a single-issuer ring is dropped on a thread other than the one that drove it,
    /// which the kernel lets neither cancel nor wait. Its outcome is unknown, and its
    /// buffers are leaked — never reused, since the kernel may still write them — so the
    /// completion carries none.
    Abandoned,
    /// A direct-I/O request was not aligned as the device requires. `what` names the
    /// offending quantity (`"offset"`, `"length"` or `"buffer"`), `value` is its value and
    /// `align` the alignment it must be a multiple of.
    Misaligned {
        /// Which part of the request is misaligned.
        what: &'static str,
        /// The misaligned value.
        value: u64,
        /// The alignment required, in bytes.
        align: u32,
    },
    /// No free slot in the buffer pool (from a non-blocking get, or a waiting get that
    /// timed out).
    PoolExhausted,
    /// The kernel (or this ring's configuration) lacks a feature the request needs.
    Unsupported {
        /// The missing feature, e.g. `"io_uring"` or `"IORING_OP_READ_MULTISHOT"`.
        feature: &'static str,
    },
    /// The request is invalid on its face in a way no other kind names (a one-off rule:
    /// conflicting options, an internal invariant, ...). `reason` says which rule it broke.
    InvalidInput {
        /// A short, static description of the rule that was broken.
        reason: &'static str,
    },
    /// The target is the wrong kind of file for the request (a transfer on a directory, a
    /// FIFO receive on a regular file, a byte range on a pipe, ...).
    WrongTargetKind {
        /// What the request needs, e.g. `"a file or block device"`.
        need: &'static str,
        /// What the target is.
        have: FdKind,
    },
    /// The request reads from a target that is not open for reading.
    NotReadable,
    /// The request writes to a target that is not open for writing.
    NotWritable,
    /// A positional write to a target opened `O_APPEND`: it would land at the end of the
    /// file, not at its offset, so it is refused.
    AppendOnly,
    /// A transfer, list or buffer that must hold at least one byte is empty. `what` names
    /// it (`"transfer"`, `"receive"`, `"scatter/gather list"`, ...).
    ZeroLength {
        /// What is empty.
        what: &'static str,
    },
    /// A number (a length, a count, a configuration value) outside the range the API
    /// accepts: `what` must lie in `min..=max` (`max == u64::MAX`: no upper bound).
    OutOfRange {
        /// Which value, e.g. `"max_in_flight"` or `"transfer length"`.
        what: &'static str,
        /// The smallest value accepted.
        min: u32,
        /// The largest value accepted.
        max: u64,
    },
    /// A value that must be a power of two (an alignment, a ring size) is not.
    NotPowerOfTwo {
        /// Which value, e.g. `"alignment"`.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The buffer pool has fewer slots than the configuration needs.
    PoolTooSmall {
        /// What needs the slots, e.g. `"pending_reads"`.
        what: &'static str,
        /// Slots needed.
        need: u32,
        /// Slots the pool has.
        have: u32,
    },
    /// An object (a ticket, a driver, a buffer ring) used with a ring it does not belong
    /// to, or no longer registered with this one.
    WrongRing {
        /// The object, e.g. `"ticket"`.
        what: &'static str,
    },
    /// The request (or transaction) already completed: nothing is left to wait for, and no
    /// reference can be taken on it.
    AlreadyCompleted,
    /// Refused while something is still in progress (a transaction not yet completed or
    /// collected, a buffer ring still in use).
    InProgress {
        /// What is in progress, e.g. `"a FIFO transaction"`.
        what: &'static str,
    },
    /// An event or call refers to something that is not in progress: an unknown or stale
    /// id, one that already completed, or nothing started at all. For a state machine, a
    /// completion it cannot have asked for.
    NotInProgress {
        /// What is missing, e.g. `"operation"` or `"timer"`.
        what: &'static str,
    },
    /// A completion reports more bytes than its operation asked for.
    ExcessBytes,
    /// A completion event of the wrong kind for its operation (a poll result for a read,
    /// ...).
    EventMismatch,
    /// The buffer cannot hold what the request asks for.
    BufferTooSmall {
        /// Bytes the request needs.
        need: u64,
        /// Bytes the buffer has room for.
        have: u64,
    },
    /// A positional transfer reaches beyond the largest file position the kernel accepts
    /// (`i64::MAX`): `offset + len` overflows it. (io_uring reads offset `-1`, i.e.
    /// `u64::MAX`, as "the current file position"; such offsets are refused, never sent.)
    OffsetOutOfRange {
        /// The requested file offset.
        offset: u64,
        /// The transfer's length in bytes.
        len: u64,
    },
    /// The target (a registered file) was closed or belongs to another ring.
    StaleTarget,
    /// The ring behind a [`RingHandle`](crate::RingHandle) is gone (dropped, or it has
    /// finished a [`shutdown_now`](crate::RingHandle::shutdown_now)): nothing sent
    /// through the handle can run any more.
    RingClosed,
    /// The source ended before the request was satisfied (end of file, hang-up).
    UnexpectedEof {
        /// Bytes received before the end.
        got: u64,
    },
    /// The kernel returned this errno.
    Os(i32),
}

/// What kind of file a target is (see [`FdInfo`](crate::FdInfo)); defined here so
/// [`ErrorKind::WrongTargetKind`] can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A regular file: positional I/O.
    File,
    /// A block device: positional I/O.
    BlockDevice,
    /// A pipe or named FIFO: a stream.
    Pipe,
    /// A socket: a stream.
    Socket,
    /// A terminal (pty, serial tty): a stream.
    Tty,
    /// Another character device: a stream.
    CharDevice,
    /// A directory: no transfers; `fsync` (to make its entries durable) and poll.
    Directory,
    /// Anything else (eventfd, epoll, timerfd, signalfd, ...): no transfers; poll only.
    Other,
}

impl FdKind {
    /// Whether reads and writes take a file offset (regular files and block devices).
    pub fn is_seekable(self) -> bool {
        matches!(self, FdKind::File | FdKind::BlockDevice)
    }

    /// Whether reads and writes make sense on it: seekable or a stream (not a directory,
    /// not an eventfd or other anonymous inode).
    pub fn is_transferable(self) -> bool {
        self.is_seekable() || self.is_stream()
    }

    /// Whether this is a FIFO-like source: pipe, FIFO, socket, tty, character device.
    pub fn is_stream(self) -> bool {
        matches!(
            self,
            FdKind::Pipe | FdKind::Socket | FdKind::Tty | FdKind::CharDevice
        )
    }
}

impl fmt::Display for FdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FdKind::File => "a regular file",
            FdKind::BlockDevice => "a block device",
            FdKind::Pipe => "a pipe or FIFO",
            FdKind::Socket => "a socket",
            FdKind::Tty => "a terminal",
            FdKind::CharDevice => "a character device",
            FdKind::Directory => "a directory",
            FdKind::Other => "an eventfd, epoll or other special file",
        })
    }
}

/// The crate's error: an [`ErrorKind`] you can match on, printable, convertible to
/// [`io::Error`].
///
/// ```
/// use iocomplete::{Error, ErrorKind};
/// let e = Error::new(ErrorKind::Misaligned { what: "offset", value: 100, align: 512 });
/// assert!(matches!(e.kind(), ErrorKind::Misaligned { align: 512, .. }));
/// let io: std::io::Error = e.into();
/// assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
}

impl Error {
    /// An error of this kind.
    pub const fn new(kind: ErrorKind) -> Error {
        Error { kind }
    }

    /// An error from a (positive) errno value. `ECANCELED` and `ETIME` map to
    /// [`ErrorKind::Cancelled`] and [`ErrorKind::TimedOut`].
    pub const fn from_errno(errno: i32) -> Error {
        let kind = match errno {
            libc::ECANCELED => ErrorKind::Cancelled,
            libc::ETIME | libc::ETIMEDOUT => ErrorKind::TimedOut,
            e => ErrorKind::Os(e),
        };
        Error { kind }
    }

    /// The last OS error of this thread (after a failed libc call).
    pub(crate) fn last_os() -> Error {
        Error::from_io(&io::Error::last_os_error())
    }

    /// Convert an [`io::Error`] (from a std or io-uring call) without allocating.
    pub(crate) fn from_io(e: &io::Error) -> Error {
        // An `io::Error` made from one of ours (`From<Error> for io::Error`) gives it back.
        if let Some(ours) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
            return *ours;
        }
        match e.raw_os_error() {
            Some(n) => Error::from_errno(n),
            None => Error::new(ErrorKind::InvalidInput {
                reason: "non-OS I/O error",
            }),
        }
    }

    /// Shorthand for [`ErrorKind::InvalidInput`].
    pub const fn invalid(reason: &'static str) -> Error {
        Error::new(ErrorKind::InvalidInput { reason })
    }

    /// Shorthand for [`ErrorKind::OutOfRange`].
    pub(crate) const fn out_of_range(what: &'static str, min: u32, max: u64) -> Error {
        Error::new(ErrorKind::OutOfRange { what, min, max })
    }

    /// Shorthand for [`ErrorKind::WrongTargetKind`].
    pub(crate) const fn wrong_kind(need: &'static str, have: FdKind) -> Error {
        Error::new(ErrorKind::WrongTargetKind { need, have })
    }

    /// Shorthand for [`ErrorKind::ZeroLength`].
    pub(crate) const fn zero_length(what: &'static str) -> Error {
        Error::new(ErrorKind::ZeroLength { what })
    }

    /// Shorthand for [`ErrorKind::NotInProgress`].
    pub(crate) const fn not_in_progress(what: &'static str) -> Error {
        Error::new(ErrorKind::NotInProgress { what })
    }

    /// Shorthand for [`ErrorKind::Unsupported`].
    pub const fn unsupported(feature: &'static str) -> Error {
        Error::new(ErrorKind::Unsupported { feature })
    }

    /// What went wrong.
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The errno behind this error, if it came from (or maps to) the kernel.
    pub const fn raw_os_error(&self) -> Option<i32> {
        match self.kind {
            ErrorKind::Os(e) => Some(e),
            ErrorKind::Cancelled => Some(libc::ECANCELED),
            ErrorKind::TimedOut => Some(libc::ETIME),
            _ => None,
        }
    }

    /// True for [`ErrorKind::Cancelled`].
    pub const fn is_cancelled(&self) -> bool {
        matches!(self.kind, ErrorKind::Cancelled)
    }

    /// True for [`ErrorKind::TimedOut`].
    pub const fn is_timed_out(&self) -> bool {
        matches!(self.kind, ErrorKind::TimedOut)
    }
}

/// For `?` on std calls in functions returning the crate's [`Result`]: an OS error keeps
/// its errno (as [`Error::from_errno`]); an error without one (a std-made `io::Error`)
/// becomes [`ErrorKind::InvalidInput`].
///
/// ```
/// fn open(path: &str) -> iocomplete::Result<std::fs::File> {
///     Ok(std::fs::File::open(path)?)
/// }
/// let e = open("/no/such/file").unwrap_err();
/// assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
/// assert_eq!(format!("{e:?}"), "Os(ENOENT)");
/// ```
impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::from_io(&e)
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Error {
        Error { kind }
    }
}

/// `Os(ENOSPC)` rather than `Os(28)`; every other kind as derived.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Os(e) => match errno_name(e) {
                Some(name) => write!(f, "Os({name})"),
                None => write!(f, "Os({e})"),
            },
            kind => fmt::Debug::fmt(&kind, f),
        }
    }
}

/// The symbolic name of a common errno value (`28` → `"ENOSPC"`), `None` for the rest.
pub(crate) const fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::ETIME => "ETIME",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        libc::ECANCELED => "ECANCELED",
        libc::EOWNERDEAD => "EOWNERDEAD",
        _ => return None,
    })
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Cancelled => f.write_str("operation cancelled"),
            ErrorKind::TimedOut => f.write_str("operation timed out"),
            ErrorKind::Abandoned => f.write_str(
                "ring dropped while the kernel still held the operation; outcome unknown, buffers leaked",
            ),
            ErrorKind::Misaligned { what, value, align } => write!(
                f,
                "direct I/O {what} {value} is not a multiple of the required alignment {align}"
            ),
            ErrorKind::PoolExhausted => f.write_str("buffer pool exhausted"),
            ErrorKind::Unsupported { feature } => write!(f, "unsupported: {feature}"),
            ErrorKind::InvalidInput { reason } => write!(f, "invalid input: {reason}"),
            ErrorKind::WrongTargetKind { need, have } => {
                write!(f, "wrong kind of target: needs {need}, but it is {have}")
            }
            ErrorKind::NotReadable => f.write_str("target is not open for reading"),
            ErrorKind::NotWritable => f.write_str("target is not open for writing"),
            ErrorKind::AppendOnly => f.write_str(
                "target is open for append (O_APPEND): a positional write would ignore its offset",
            ),
            ErrorKind::ZeroLength { what } => write!(f, "zero-length {what}"),
            ErrorKind::OutOfRange { what, min, max } if max == u64::MAX => {
                write!(f, "{what} out of range: must be at least {min}")
            }
            ErrorKind::OutOfRange { what, min, max } => {
                write!(f, "{what} out of range: must be in {min}..={max}")
            }
            ErrorKind::NotPowerOfTwo { what, value } => {
                write!(f, "{what} {value} is not a power of two")
            }
            ErrorKind::PoolTooSmall { what, need, have } => write!(
                f,
                "buffer pool too small: {what} needs {need} slots, the pool has {have}"
            ),
            ErrorKind::WrongRing { what } => write!(
                f,
                "{what} belongs to another ring (or is no longer registered with this one)"
            ),
            ErrorKind::AlreadyCompleted => f.write_str("the request already completed"),
            ErrorKind::InProgress { what } => write!(f, "{what} is still in progress"),
            ErrorKind::NotInProgress { what } => write!(
                f,
                "{what}: not in progress (unknown, stale, already completed or never started)"
            ),
            ErrorKind::ExcessBytes => {
                f.write_str("completion reports more bytes than its operation asked for")
            }
            ErrorKind::EventMismatch => {
                f.write_str("completion event of the wrong kind for its operation")
            }
            ErrorKind::BufferTooSmall { need, have } => {
                write!(f, "buffer too small: need {need} bytes, have {have}")
            }
            ErrorKind::OffsetOutOfRange { offset, len } => write!(
                f,
                "offset {offset} + length {len} is beyond the largest file position (i64::MAX)"
            ),
            ErrorKind::StaleTarget => f.write_str("target closed or not registered with this ring"),
            ErrorKind::RingClosed => f.write_str("the ring is gone"),
            ErrorKind::UnexpectedEof { got } => {
                write!(f, "source ended early after {got} bytes")
            }
            // io::Error's display already ends with "(os error N)".
            ErrorKind::Os(e) => write!(f, "{}", io::Error::from_raw_os_error(e)),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        use io::ErrorKind as K;
        let kind = match e.kind {
            ErrorKind::Os(n) => return io::Error::from_raw_os_error(n),
            ErrorKind::Cancelled => K::Interrupted,
            ErrorKind::TimedOut => K::TimedOut,
            ErrorKind::Abandoned => K::Other,
            ErrorKind::Misaligned { .. }
            | ErrorKind::InvalidInput { .. }
            | ErrorKind::WrongTargetKind { .. }
            | ErrorKind::NotReadable
            | ErrorKind::NotWritable
            | ErrorKind::AppendOnly
            | ErrorKind::ZeroLength { .. }
            | ErrorKind::OutOfRange { .. }
            | ErrorKind::NotPowerOfTwo { .. }
            | ErrorKind::PoolTooSmall { .. }
            | ErrorKind::WrongRing { .. }
            | ErrorKind::AlreadyCompleted
            | ErrorKind::InProgress { .. }
            | ErrorKind::NotInProgress { .. }
            | ErrorKind::ExcessBytes
            | ErrorKind::EventMismatch
            | ErrorKind::BufferTooSmall { .. }
            | ErrorKind::OffsetOutOfRange { .. } => K::InvalidInput,
            ErrorKind::PoolExhausted => K::WouldBlock,
            ErrorKind::Unsupported { .. } => K::Unsupported,
            ErrorKind::StaleTarget => K::NotFound,
            ErrorKind::RingClosed => K::BrokenPipe,
            ErrorKind::UnexpectedEof { .. } => K::UnexpectedEof,
        };
        io::Error::new(kind, e)
    }
}

/// The errno of a negative CQE-style result (`-errno`); `i32::MIN` maps to `i32::MAX`.
pub(crate) const fn errno_of(res: i32) -> i32 {
    match res.checked_neg() {
        Some(e) => e,
        None => i32::MAX,
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
