//! # iocomplete — zero-copy I/O completion over io_uring
//!
//! (Crate overview: see README.md; this page is completed as the modules land.)

#![cfg(target_os = "linux")]

pub mod dma;
pub mod error;
pub mod gate;
pub mod split;
pub(crate) mod sync;

pub use dma::Transaction;
pub use error::{Error, ErrorKind, Result};
pub use gate::CompletionGate;
pub use split::{SplitMachine, TransferPlan};
