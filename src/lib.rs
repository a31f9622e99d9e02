//! # iocomplete — zero-copy I/O completion over io_uring
//!
//! (Crate overview: see README.md; this page is completed as the modules land.)

#![cfg(target_os = "linux")]

pub mod error;
pub mod fifo;
pub mod reader;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub(crate) mod sync;

pub use error::{Error, ErrorKind, Result};
pub use fifo::{FifoAction, FifoEvent, FifoMachine, FifoOutcome, FifoStatus};
pub use reader::{FinishReason, ReaderAction, ReaderConfig, ReaderEvent, ReaderMachine, Restart};
