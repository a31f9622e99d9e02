//! What executes a ring's operations: the kernel's io_uring, or a pool of threads that
//! interprets the same submission entries with ordinary system calls (see [`threads`]).
//!
//! The ring above builds the same SQEs and routes the same `(user_data, result, flags)`
//! completions whichever backend runs beneath it; only submitting, waiting and reaping
//! (and the registrations io_uring alone has) differ.

use std::os::fd::{AsFd, BorrowedFd};

use io_uring::IoUring;

use crate::error::{Error, Result};

pub(crate) mod threads;

pub(crate) use threads::Threads;

/// The environment variable that picks a backend for rings built with
/// [`BackendKind::Auto`] (the default): `threads`, `uring` or `auto`.
pub const BACKEND_ENV: &str = "IOCOMPLETE_BACKEND";

/// Which backend executes a ring's operations ([`RingBuilder::backend`], [`Ring::backend`]).
///
/// Both give every operation the same [`Completion`](crate::Completion) through the same
/// routes, with the same cancel, deadline and exactly-once rules; they differ in speed and
/// in the io_uring-only features the thread pool reports as missing in
/// [`Capabilities`](crate::Capabilities) (registered files and buffers, multishot reads,
/// provided-buffer rings, SQPOLL).
///
/// [`RingBuilder::backend`]: crate::RingBuilder::backend
/// [`Ring::backend`]: crate::Ring::backend
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendKind {
    /// For [`RingBuilder::backend`](crate::RingBuilder::backend) only (the default):
    /// the `IOCOMPLETE_BACKEND` environment variable decides if it is set (`threads`,
    /// `uring` or `auto`, surrounding spaces ignored; empty counts as unset; anything else
    /// is refused with
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)); otherwise io_uring,
    /// falling back to [`Threads`](Self::Threads) when the kernel refuses to set it up
    /// (`ENOSYS`: no io_uring, or a seccomp filter; `EPERM`/`EACCES`:
    /// `kernel.io_uring_disabled`, a container's seccomp profile). A ring never reports
    /// `Auto`: [`Ring::backend`](crate::Ring::backend) says which one it got.
    #[default]
    Auto,
    /// The kernel's io_uring. Building fails with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) `{ feature: "io_uring" }`
    /// where it is refused.
    Uring,
    /// A pool of threads running `preadv2`/`pwritev2`/`poll`/`fsync` (see
    /// [`RingBuilder::threads`](crate::RingBuilder::threads) for how many threads).
    /// Works wherever threads do.
    Threads,
}

impl BackendKind {
    /// The choice `IOCOMPLETE_BACKEND` makes: `None` when it is unset.
    pub(crate) fn from_env() -> Result<Option<BackendKind>> {
        let Some(v) = std::env::var_os(BACKEND_ENV) else {
            return Ok(None);
        };
        match v.to_str().map(str::trim) {
            Some("threads") => Ok(Some(BackendKind::Threads)),
            Some("uring") | Some("io_uring") => Ok(Some(BackendKind::Uring)),
            Some("auto") | Some("") => Ok(Some(BackendKind::Auto)),
            _ => Err(Error::invalid(
                "IOCOMPLETE_BACKEND must be `threads`, `uring` or `auto`",
            )),
        }
    }

    /// Whether `io_uring_setup` failing with `errno` means "io_uring is not allowed
    /// here", which [`Auto`](Self::Auto) answers with the thread pool.
    pub(crate) fn refused(errno: Option<i32>) -> bool {
        matches!(errno, Some(libc::ENOSYS | libc::EPERM | libc::EACCES))
    }
}

/// The backend of one ring.
// One per ring: the io_uring instance stays inline (no indirection on every submit and
// reap) rather than boxed to save 264 bytes on thread-pool rings.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backend {
    /// The io_uring instance.
    Uring(IoUring),
    /// The thread pool.
    Threads(Threads),
}

impl Backend {
    /// Which kind this is.
    pub(crate) fn kind(&self) -> BackendKind {
        match self {
            Backend::Uring(_) => BackendKind::Uring,
            Backend::Threads(_) => BackendKind::Threads,
        }
    }
}

impl AsFd for Backend {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Backend::Uring(u) => u.as_fd(),
            Backend::Threads(t) => t.as_fd(),
        }
    }
}
