//! # iocomplete — zero-copy I/O completion over io_uring
//!
//! (Crate overview: see README.md; this page is completed as the modules land.)

#![cfg(target_os = "linux")]

pub mod error;
pub mod gate;
pub mod split;
pub(crate) mod sync;

pub use error::{Error, ErrorKind, Result};
pub use gate::CompletionGate;
pub use split::{SplitMachine, TransferPlan};
