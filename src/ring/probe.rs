//! What the kernel and this ring can do, read once at build.

use io_uring::{opcode, IoUring, Probe};

/// `IORING_OP_READV_FIXED` (Linux 6.15); not yet named by the io-uring crate.
pub(crate) const OP_READV_FIXED: u8 = 60;
/// `IORING_OP_WRITEV_FIXED` (Linux 6.15).
pub(crate) const OP_WRITEV_FIXED: u8 = 61;

/// A ring's capability report: kernel features and opcodes found by the probe, and what
/// the ring managed to set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Submission queue entries.
    pub sq_entries: u32,
    /// Completion queue entries.
    pub cq_entries: u32,
    /// `IORING_FEAT_NODROP`: completions beyond the CQ size are kept, not dropped.
    pub nodrop: bool,
    /// `IORING_FEAT_EXT_ARG`: waits with a timeout in one `io_uring_enter`.
    pub ext_arg: bool,
    /// `IORING_SETUP_SQPOLL` is in use.
    pub sqpoll: bool,
    /// `IORING_SETUP_SINGLE_ISSUER` is in use.
    pub single_issuer: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` is in use.
    pub defer_taskrun: bool,
    /// A registered-file table was set up (ops use fixed files).
    pub fixed_files: bool,
    /// A registered-buffer table was set up (pool buffers use `READ_FIXED`/`WRITE_FIXED`).
    pub fixed_buffers: bool,
    /// `IORING_OP_READ_FIXED`.
    pub read_fixed: bool,
    /// `IORING_OP_READV_FIXED` / `WRITEV_FIXED` (Linux 6.15).
    pub readv_fixed: bool,
    /// `IORING_OP_READ_MULTISHOT` (Linux 6.7).
    pub read_multishot: bool,
    /// Provided-buffer rings (`IORING_REGISTER_PBUF_RING`, Linux 5.19); inferred from
    /// `IORING_OP_SOCKET` support, which arrived in the same release.
    pub buf_ring: bool,
    /// `IORING_OP_LINK_TIMEOUT`.
    pub link_timeout: bool,
    /// `IORING_OP_ASYNC_CANCEL`.
    pub async_cancel: bool,
    /// `RWF_NOAPPEND` (Linux 6.9): positional writes carry it, so they land at their
    /// offset even on a file whose `O_APPEND` was set after it was registered.
    pub rwf_noappend: bool,
    /// `IORING_OP_MSG_RING` (Linux 5.18): [`Ring::post`](crate::Ring::post) rings
    /// another io_uring ring's doorbell from this ring's submission queue instead of with
    /// a system call of its own.
    pub msg_ring: bool,
}

impl Capabilities {
    pub(crate) fn probe(ring: &IoUring) -> Capabilities {
        let mut p = Probe::new();
        let have = ring.submitter().register_probe(&mut p).is_ok();
        let op = |code: u8| have && p.is_supported(code);
        let params = ring.params();
        Capabilities {
            sq_entries: params.sq_entries(),
            cq_entries: params.cq_entries(),
            nodrop: params.is_feature_nodrop(),
            ext_arg: params.is_feature_ext_arg(),
            sqpoll: params.is_setup_sqpoll(),
            single_issuer: params.is_setup_single_issuer(),
            defer_taskrun: false,
            fixed_files: false,
            fixed_buffers: false,
            read_fixed: op(opcode::ReadFixed::CODE),
            readv_fixed: op(OP_READV_FIXED) && op(OP_WRITEV_FIXED),
            read_multishot: op(opcode::ReadMulti::CODE),
            buf_ring: op(opcode::Socket::CODE),
            link_timeout: op(opcode::LinkTimeout::CODE),
            async_cancel: op(opcode::AsyncCancel::CODE),
            rwf_noappend: rwf_noappend(),
            msg_ring: op(opcode::MsgRingData::CODE),
        }
    }
}

impl Capabilities {
    /// The thread-pool backend's report: `entries` and `cq_entries` as io_uring would
    /// round them; no registered files or buffers, no multishot reads or buffer rings, no
    /// SQPOLL; cancels, linked deadlines, timed waits and an unbounded completion queue.
    pub(crate) fn threads(entries: u32, cq_entries: u32) -> Capabilities {
        Capabilities {
            sq_entries: entries.next_power_of_two(),
            cq_entries: cq_entries.next_power_of_two(),
            nodrop: true,
            ext_arg: true,
            link_timeout: true,
            async_cancel: true,
            rwf_noappend: rwf_noappend(),
            ..Capabilities::default()
        }
    }
}

/// Whether the kernel knows `RWF_NOAPPEND`: a one-byte `pwritev2` with it to a memfd,
/// once per process (older kernels answer `EOPNOTSUPP` to unknown flags).
fn rwf_noappend() -> bool {
    static KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWN.get_or_init(|| {
        // SAFETY: a valid NUL-terminated name and flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"iocomplete-probe".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return false;
        }
        let byte = 0u8;
        let iov = libc::iovec {
            iov_base: (&byte as *const u8).cast_mut().cast(),
            iov_len: 1,
        };
        // SAFETY: `iov` describes one valid byte; `fd` is our own memfd.
        let n = unsafe { libc::pwritev2(fd, &iov, 1, 0, libc::RWF_NOAPPEND) };
        // SAFETY: `fd` is ours and closed once.
        unsafe { libc::close(fd) };
        n == 1
    })
}
