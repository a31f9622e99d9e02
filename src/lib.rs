//! # iocomplete — zero-copy I/O completion over io_uring
//!
//! Buffers the kernel reads into and the caller forwards without a copy, operations that
//! complete exactly once whatever races with them (cancel, timeout, error), and four
//! drivers for the shapes of I/O that keep recurring: a source read continuously, a
//! buffer filled from a stream that runs dry, a large transfer split into chunks, and a
//! scatter/gather transaction.
//!
//! (History: the model — completion status and reference counts, request reuse,
//! transactions that complete transfer by transfer — comes from kernel driver frameworks;
//! this crate restates it for Linux user space on io_uring. Nothing here needs them.)
//!
//! ## The model in one page
//!
//! * **Buffers** ([`buf`]): one memmap2 arena of aligned slots, registered with the ring as
//!   fixed buffers. Each slot has a *header* room immediately before its data, so
//!   `header + data` is one contiguous [`frame`](PoolBuf::frame) that can be forwarded
//!   without a copy; [`len`](PoolBuf::len) counts the bytes transferred, never the header.
//!   Ownership is the reference count: dropping a [`PoolBuf`] returns its slot (lock-free,
//!   any thread); [`share`](PoolBuf::share) makes a clonable read-only [`SharedBuf`].
//! * **Ring** ([`ring`]): one io_uring per thread. Operations ([`Op`]) carry their buffers;
//!   the ring parks them in its op table until the kernel's completion arrives — never
//!   freed or reused earlier, even on cancel or drop.
//! * **Exactly-once completion** ([`Submission`]): every operation yields one [`Completion`]
//!   (status, bytes, buffers back), by the route the caller chose: `.wait()`, a ticket, a
//!   completion routine, a [`CompletionQueue`] any thread consumes, a future, or
//!   `.detach()`. Invalid requests complete with a typed [`Error`] without a syscall.
//! * **Who drives a ring**: the thread that owns it, a thread of its own
//!   ([`Ring::spawn`]), a tokio task (`iocomplete::tokio`, feature `tokio`), or any event
//!   loop (the ring is [`AsFd`](std::os::fd::AsFd); [`Ring::poll_complete`] is one
//!   non-blocking turn). Other threads and tasks use it through a [`RingHandle`];
//!   dropping an [`OpFuture`] cancels its operation.
//! * **Many rings**: a [`RingSet`] drives one ring per worker thread; a message
//!   ([`RingHandle::post`], [`Ring::post`], announced by an `IORING_OP_MSG_RING` doorbell
//!   between rings) runs on a ring's thread with the ring, and [`Ring::submit_on`] runs an
//!   operation on another ring and brings its completion home — exactly once whichever
//!   ring shuts down first.
//!   Cancel and deadline complete with distinct kinds ([`ErrorKind::Cancelled`],
//!   [`ErrorKind::TimedOut`]).
//! * **State machines** — sans-I/O: events in, operations out, no syscalls — hold the
//!   hard logic, so it is testable without a kernel and fuzzable with arbitrary
//!   completion orders:
//!   [`reader`] (continuous reader: N reads in flight per source, restart on failure;
//!   [`ContinuousReader`] drives it on a ring),
//!   [`fifo`] (fill a buffer from a source that runs dry, waiting for readiness; driven on
//!   a ring by [`FifoReceiver`]),
//!   [`split`] (a large transfer as chunks that complete as one, serial or parallel;
//!   driven by [`SplitDriver`]),
//!   [`dma`] (a scatter/gather transaction over an [`SgList`] that completes transfer by
//!   transfer; driven by [`DmaDriver`]).
//! * **Completion gate** ([`gate`]): the begin-completion + reference-count pattern as a
//!   lock-free primitive, so transfer, cancel and timer paths race safely to one
//!   completion.
//!
//! ## Where to start
//!
//! Each driver's page has a short example on a file or socket it makes itself:
//! read a file with [`ContinuousReader`], receive from a stream with [`FifoReceiver`],
//! copy a file with [`SplitDriver`], gather extents with [`DmaDriver`]. The example
//! below shows the ring on its own; [`Error`] converts from and into [`std::io::Error`], so
//! `?` works both ways.
//!
//! ```
//! use iocomplete::{BufferPool, Op, Ring};
//! use std::io::Write;
//!
//! let mut file = tempfile::tempfile()?; // std errors convert with `?`
//! file.write_all(&[7u8; 8192])?;
//!
//! let mut ring = Ring::new()?;
//! let pool = BufferPool::builder().slots(8).slot_len(4096).header_len(16).build()?;
//! ring.register_pool(&pool);
//! let file = ring.register(file)?;
//!
//! // Two reads in flight, collected in any order.
//! let a = ring.submit(Op::read(file, 0, pool.try_get()?)).ticket();
//! let b = ring.submit(Op::read(file, 4096, pool.try_get()?)).ticket();
//! let b = ring.wait(b)?.into_result()?;
//! let a = ring.wait(a)?.into_result()?;
//! assert_eq!((a.len(), b.len()), (4096, 4096));
//! assert_eq!(a.frame().len(), 16 + 4096);
//! # Ok::<(), iocomplete::Error>(())
//! ```

#![cfg(target_os = "linux")]

pub mod buf;
pub mod dma;
pub mod error;
pub mod fifo;
pub mod gate;
pub mod queue;
pub mod reader;
pub mod ring;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod split;
pub(crate) mod sync;
#[cfg(test)]
mod testing;
#[cfg(feature = "tokio")]
pub use ring::tokio;
mod waiters;

// What the crate root re-exports (the rule): the ring and everything needed to submit to
// it and consume its completions; the buffer pool; errors; the completion queue and gate
// primitives; and each driver with everything needed to build, run and read one — its
// builder, config, job/mode types, callbacks' argument types, outcome and report. The
// sans-I/O machines (`ReaderMachine`, `FifoMachine`, `SplitMachine`, `dma::Transaction`)
// and their actions, events and configs stay in their modules: they are for driving a
// machine yourself, and their names say which module they come from.
pub use buf::{BufferPool, GetBuf, IoBuf, PoolBuf, SharedBuf};
pub use dma::{
    DmaConfig, DmaDriver, DmaDriverBuilder, DmaOutcome, DmaStats, Rejected, SgList, TransferReport,
};
pub use error::{Error, ErrorKind, Result};
pub use fifo::{FifoOutcome, FifoReceived, FifoReceiver, FifoRefused, FifoStatus, TxnId};
pub use gate::CompletionGate;
pub use queue::CompletionQueue;
pub use reader::{
    CancelHandle, ContinuousReader, ContinuousReaderBuilder, Dispatch, FinishReason, ReaderReport,
    ReaderStats, Restart, StreamReads,
};
pub use ring::{
    BackendKind, BufRing, BufferRegistration, Bufs, Capabilities, Completion, Direction, Driver,
    FdInfo, FdKind, HandOff, Op, OpFuture, OpId, Ring, RingBuilder, RingHandle, RingSet,
    RingSetBuilder, RingStats, Submission, Target, Ticket,
};
pub use split::{Job, Mode, SplitConfig, SplitDriver, SplitOutcome, SplitStats};

/// The README's examples, compiled and run as doc tests (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
