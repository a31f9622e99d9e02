//! DMA-style scatter/gather transactions: a list of segments executed as transfers that
//! complete one by one, and a request that completes once.
//!
//! The model, sans-I/O:
//!
//! - A [`Transaction`] runs over a scatter/gather list of [`Segment`]s, each a memory
//!   length (the driver's buffer at that index) and a device offset.
//! - It is executed as [`Transfer`]s bounded by [`DmaConfig::max_transfer`] bytes and
//!   [`DmaConfig::max_segments`] iovecs: one transfer is a run of segments whose device
//!   offsets are contiguous, so one `readv`/`writev` carries it; a segment longer than the
//!   max transfer is split. [`DmaConfig::max_in_flight`] transfers run at once (default 1).
//! - Each transfer's completion comes back with a status — `Ok(())`, or its typed
//!   [`Error`](crate::Error) (of kind `Cancelled` for a cancelled transfer) — and a byte
//!   count.
//!   [`Transaction::transfer_completed`] returns `false` while more transfers are to come
//!   and `true` exactly once, on the final one; [`Transaction::completed_final`] ends the
//!   transaction early (error, cancel, or the driver's choice). Short transfers continue.
//! - [`Transaction::cancel`] ends it with status `Cancelled`; a deadline timer
//!   ([`DmaConfig::timer`]) ends it with `TimedOut`. A cancel or a timeout can arrive at any
//!   point; transfers in flight are cancelled and **drain first**:
//!   [`Transaction::buffers_releasable`] turns true only after the final transfer's
//!   completion came back.
//! - [`Transaction::bytes_transferred`] counts what actually moved, even when a cancel or
//!   timeout wins.
//! - The request completes ([`DmaAction::Complete`], exactly once) when the last completion
//!   reference of its [`CompletionGate`](crate::gate::CompletionGate) drops: the
//!   execution path's (at the final transfer), the cancel path's, and the timer's. Status:
//!   the first of cancel / timeout / final transfer to begin completion wins, except that
//!   the first device error overrides a cancel or timeout (a failure the caller must see
//!   is never hidden behind "cancelled").
//!
//! [`DmaDriver`] executes a transaction on a [`Ring`](crate::Ring) over an [`SgList`] of
//! pooled buffers mapped to device offsets.
//!
//! Like [`crate::split`], the machine takes events and emits [`DmaAction`]s to poll; it never
//! makes a syscall, allocates only in [`Transaction::new`], never panics, and rejects
//! impossible events with an error (see [`Transaction::handle`], the single entry point a
//! fuzz target can drive).
//!
//! ```
//! use iocomplete::dma::{DmaAction, DmaConfig, Segment, Transaction};
//! use iocomplete::ring::Direction;
//! // Two extents: 8 KiB at 0 (two 4 KiB buffers) and 4 KiB at 1 MiB.
//! let sg = [Segment::new(0, 4096), Segment::new(4096, 4096), Segment::new(1 << 20, 4096)];
//! let mut tx = Transaction::new(&sg[..], Direction::Read, DmaConfig::new())?;
//! let mut finals = 0;
//! while let Some(action) = tx.poll_action() {
//!     match action {
//!         // A real driver builds iovecs from `t.pieces(&sg)` and submits a readv.
//!         DmaAction::Submit(t) => finals += tx.transfer_completed(t.id, Ok(()), t.len)? as u32,
//!         DmaAction::Complete(c) => assert_eq!((c.status, c.bytes), (Ok(()), 12288)),
//!         other => unreachable!("{other:?}"),
//!     }
//! }
//! assert_eq!(finals, 1);
//! assert!(tx.buffers_releasable() && tx.is_complete());
//! # Ok::<(), iocomplete::Error>(())
//! ```

mod driver;
mod sg;
mod sglist;
#[cfg(all(test, not(loom)))]
mod tests;
mod transaction;

pub use driver::{DmaDriver, DmaDriverBuilder, DmaStats, Rejected, TransferReport};
pub use sg::{Piece, Pieces, Segment, Transfer, TransferId};
pub use sglist::SgList;
pub use transaction::{
    DmaAction, DmaConfig, DmaEvent, DmaOutcome, Transaction, MAX_IN_FLIGHT, MAX_SEGMENTS,
};
