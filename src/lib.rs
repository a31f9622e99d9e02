//! # iocomplete — zero-copy I/O completion over io_uring
//!
//! (Crate overview: see README.md; this page is completed as the modules land.)

#![cfg(target_os = "linux")]

pub mod error;
pub(crate) mod sync;

pub use error::{Error, ErrorKind, Result};
pub mod buf;

pub use buf::{BufferPool, IoBuf, PoolBuf, SharedBuf};
pub mod queue;

pub use queue::CompletionQueue;
pub mod request;
pub mod ring;

pub use request::{Bufs, Completion, OpFuture, Submission, Ticket};
pub use ring::{
    BufferRegistration, Capabilities, FdInfo, FdKind, Op, OpId, Ring, RingBuilder, RingHandle,
    RingStats, Target,
};
