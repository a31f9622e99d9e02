//! Driving a [`Ring`] from a tokio runtime (feature `tokio`): no thread of its own, no busy
//! polling.
//!
//! [`spawn`] moves the ring onto a tokio task that sleeps in tokio's reactor until the
//! ring's descriptor says a completion is waiting ([`Ring::poll_complete`] on
//! [`AsyncFd`]). Every other task uses the ring through the [`RingHandle`] it returns:
//! register files, submit, `.await` [`OpFuture`](crate::OpFuture)s (dropping one cancels
//! its operation), cancel, shut down. It works on current-thread and multi-thread
//! runtimes; the runtime needs its I/O driver (`enable_io`, or `enable_all`).
//!
//! ```
//! use iocomplete::{BufferPool, Op, Ring};
//! use std::io::Write;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let mut f = tempfile::tempfile()?;
//!     f.write_all(b"read from a tokio task")?;
//!
//!     let pool = BufferPool::builder().slots(8).slot_len(4096).build()?;
//!     let mut ring = Ring::new()?;
//!     ring.register_pool(&pool);
//!     let (ring, driver) = iocomplete::tokio::spawn(ring)?;
//!
//!     let file = ring.register(f)?;
//!     let buf = pool.get_async().await; // waits for a free slot
//!     let done = ring.submit_future(Op::read(file, 0, buf)).await;
//!     assert_eq!(done.into_result()?.data(), b"read from a tokio task");
//!
//!     ring.shutdown();
//!     let ring = driver.await??; // idle: every operation has completed
//!     assert_eq!(ring.in_flight(), 0);
//!     Ok(())
//! })
//! # }
//! ```

use std::future::poll_fn;
use std::task::Poll;

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::Interest;
use ::tokio::runtime::{Handle, RuntimeFlavor};
use ::tokio::task::JoinHandle;

use super::{Ring, RingHandle};
use crate::error::{Error, Result};

/// Spawn a task on the current tokio runtime that drives `ring` (see [`drive`]), and
/// return a handle to use it with. The task ends once [`RingHandle::shutdown`] (or
/// [`shutdown_now`](RingHandle::shutdown_now)) was called and every operation has
/// completed, handing the idle ring back (for its statistics; drop it to close it), or
/// with the ring's first error.
///
/// Errors: called outside a tokio runtime ([`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput));
/// those of [`drive`].
pub fn spawn(mut ring: Ring) -> Result<(RingHandle, JoinHandle<Result<Ring>>)> {
    let rt = Handle::try_current()
        .map_err(|_| Error::invalid("iocomplete::tokio::spawn called outside a tokio runtime"))?;
    check_issuer(&ring, &rt)?;
    let handle = ring.handle()?;
    Ok((handle, rt.spawn(drive(ring))))
}

/// Drive `ring` on the current task until a handle asks for shutdown and every operation
/// has completed, then hand the idle ring back: the future behind [`spawn`], for running
/// it yourself — in a `LocalSet`, a `select!`, or `block_on`. Take a handle first
/// ([`Ring::handle`]); the ring is reached only through handles while it is driven here.
///
/// Errors: a single-issuer ring ([`RingBuilder::single_issuer`](crate::RingBuilder::single_issuer))
/// on a multi-thread runtime, whose worker threads take turns driving it while the kernel
/// accepts only one ([`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)); a
/// [`defer_taskrun`](crate::RingBuilder::defer_taskrun) ring, whose completions never
/// wake tokio's reactor ([`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported));
/// registering the descriptor with tokio's reactor; the ring's own errors.
///
/// # Panics
///
/// Outside a tokio runtime, or in one without its I/O driver, as tokio's own I/O types do.
pub async fn drive(ring: Ring) -> Result<Ring> {
    // (`spawn` hands this future to `tokio::spawn`, which checks that it is `Send`.)
    check_issuer(&ring, &Handle::current())?;
    // SAFETY: the descriptor is the io_uring instance's, owned by `ring`, which the
    // `AsyncFd` owns from here on; `poll_complete` (all `get_mut` is used for) never
    // replaces the instance, so the descriptor stays open and the same until the
    // `AsyncFd` is dropped or gives the ring back.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| Error::from_io(&e.into()))?;
    poll_fn(|cx| loop {
        if let Poll::Ready(done) = fd.get_mut().poll_complete(cx) {
            return Poll::Ready(done);
        }
        match fd.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::from_io(&e))),
            // Clear before the next turn: a completion posted after this point sets the
            // readiness again (tokio's readiness is edge-triggered per event), so none is
            // missed between the turn and the next wait.
            Poll::Ready(Ok(mut ready)) => ready.clear_ready(),
        }
    })
    .await?;
    Ok(fd.into_inner())
}

/// A single-issuer ring refuses every thread but the first that drove it; tokio's
/// multi-thread workers would take turns. A `DEFER_TASKRUN` ring's completions wait as
/// task work that wakes only a thread blocked in the ring itself, never an epoll waiter:
/// tokio's reactor would sleep through them.
fn check_issuer(ring: &Ring, rt: &Handle) -> Result<()> {
    let caps = ring.capabilities();
    if caps.defer_taskrun {
        return Err(Error::unsupported(
            "DEFER_TASKRUN rings under tokio (their completions do not wake epoll)",
        ));
    }
    if caps.single_issuer && rt.runtime_flavor() != RuntimeFlavor::CurrentThread {
        return Err(Error::invalid(
            "a single-issuer ring needs a current-thread runtime",
        ));
    }
    Ok(())
}
