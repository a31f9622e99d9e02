//! FIFO-style receive: fill a buffer from a non-blocking source, waiting for readiness when
//! it runs dry.
//!
//! [`FifoReceiver`] runs it on a [`Ring`](crate::Ring): pipes, named FIFOs, sockets,
//! ptys and serial ttys, character devices — any non-blocking source that can run dry.
//!
//! Underneath is the sans-I/O core, [`FifoMachine`]. A transaction
//! ([`FifoMachine::receive`]) reads into one caller buffer: [`FifoAction::Begin`] (the
//! `on_begin` hook), then reads of the remaining space until it is full; when the source
//! has nothing (`EAGAIN`) one readiness poll is armed and reading resumes when it fires.
//! A transaction with a deadline asks for its timer ([`FifoAction::ArmTimer`]) and is told
//! when it fires ([`FifoEvent::Deadline`]) or was cancelled. [`FifoAction::End`] (the
//! `on_end` hook) and [`FifoAction::Complete`] close it, once nothing is in flight.
//! [`FifoMachine::drain`] reads whatever the source still holds without waiting — what a
//! receiver does before it shuts down so that nothing received is lost.
//!
//! ```
//! use iocomplete::fifo::{FifoAction, FifoEvent, FifoMachine, FifoStatus};
//! use iocomplete::Error;
//!
//! let mut m = FifoMachine::new();
//! let txn = m.receive(5, None).unwrap();
//! assert_eq!(m.poll_action(), Some(FifoAction::Begin { txn, len: 5 }));
//! let Some(FifoAction::Read { seq, at: 0, len: 5 }) = m.poll_action() else { panic!() };
//! m.handle(FifoEvent::ReadDone { seq, result: Ok(2) }).unwrap(); // 2 bytes were there
//! let Some(FifoAction::Read { seq, at: 2, len: 3 }) = m.poll_action() else { panic!() };
//! let empty = Err(Error::from_errno(libc::EAGAIN));
//! m.handle(FifoEvent::ReadDone { seq, result: empty }).unwrap();
//! let Some(FifoAction::ArmPoll { seq }) = m.poll_action() else { panic!() };
//! m.handle(FifoEvent::PollDone { seq, result: Ok(libc::POLLIN as u32) }).unwrap();
//! let Some(FifoAction::Read { seq, at: 2, len: 3 }) = m.poll_action() else { panic!() };
//! m.handle(FifoEvent::ReadDone { seq, result: Ok(3) }).unwrap();
//! assert_eq!(m.poll_action(), Some(FifoAction::End { txn, bytes: 5 }));
//! let Some(FifoAction::Complete(done)) = m.poll_action() else { panic!() };
//! assert_eq!((done.status, done.bytes, done.readiness_waits), (FifoStatus::Full, 5, 1));
//! ```

mod machine;
mod receiver;
#[cfg(test)]
mod tests;

pub use machine::{FifoAction, FifoEvent, FifoMachine, FifoOutcome, FifoSeq, FifoStatus, TxnId};
pub use receiver::{FifoReceived, FifoReceiver, FifoRefused};
