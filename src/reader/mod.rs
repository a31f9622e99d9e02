//! Continuous reader: many reads in flight per source, re-armed on every completion.
//!
//! [`ContinuousReader`] runs it on a [`Ring`](crate::Ring): `pending_reads` reads in
//! flight per source, `on_read(buf, offset)` for every filled buffer,
//! `on_failed(&error) -> Restart` after a failure, optional worker threads for
//! `on_read` — or, with [`ContinuousReader::local_builder`], `FnMut` callbacks that borrow
//! the caller's state and run inline on the driving thread.
//!
//! The sans-I/O core is [`ReaderMachine`]: it decides which reads to issue,
//! what to hand to the user's `on_read`, when to report a failure and when the reader is
//! finished, but it never touches a file descriptor or a buffer. A driver (the io_uring
//! ring, or the simulated device in `sim`) executes its [`ReaderAction`]s and feeds the
//! results back as [`ReaderEvent`]s. The driver owns the buffers, keyed by the [`Seq`] of
//! the read that filled them (or by the provided-buffer id for multishot reads).
//!
//! ```
//! use iocomplete::reader::{ReaderAction, ReaderConfig, ReaderEvent, ReaderMachine};
//!
//! // A 10-byte file read 4 bytes at a time, two reads in flight.
//! let cfg = ReaderConfig::positional(4).pending_reads(2);
//! let mut m = ReaderMachine::new(cfg).unwrap();
//! let file = b"0123456789";
//! let mut out = Vec::new();
//! let mut finished = None;
//! while finished.is_none() {
//!     let Some(action) = m.poll_action() else { break };
//!     match action {
//!         ReaderAction::ReadAt { seq, offset, len } => {
//!             let start = (offset as usize).min(file.len());
//!             let end = (start + len as usize).min(file.len());
//!             let result = Ok((end - start) as u32);
//!             m.handle(ReaderEvent::ReadDone { seq, result }).unwrap();
//!         }
//!         ReaderAction::Deliver(d) => {
//!             let at = d.offset as usize;
//!             out.push((d.offset, file[at..at + d.len as usize].to_vec()));
//!             m.handle(ReaderEvent::Delivered { seq: d.seq }).unwrap();
//!         }
//!         ReaderAction::Discard { .. } => {}
//!         ReaderAction::Finished(reason) => finished = Some(reason),
//!         other => panic!("unexpected {other:?}"),
//!     }
//! }
//! out.sort();
//! let bytes: Vec<u8> = out.into_iter().flat_map(|(_, b)| b).collect();
//! assert_eq!(bytes, file);
//! assert_eq!(finished, Some(iocomplete::reader::FinishReason::Eof));
//! ```

mod config;
mod driver;
mod events;
mod machine;
#[cfg(test)]
mod tests;

pub use config::{ReaderConfig, SourceKind};
pub use driver::{
    Callbacks, CancelHandle, ContinuousReader, ContinuousReaderBuilder, Dispatch, Local,
    ReaderReport, Shared, StreamReads,
};
pub use events::{Delivery, FinishReason, ReaderAction, ReaderEvent, ReaderStats, Restart, Seq};
pub use machine::ReaderMachine;
