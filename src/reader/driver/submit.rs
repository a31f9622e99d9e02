//! Carrying out the machine's read and cancel actions: reads into pool slots (or a
//! multishot read on the provided-buffer ring) submitted through the port, held back in
//! issue order while no slot is free, and cancelled in the kernel or, never submitted,
//! completed here as the kernel would have.

use super::{Callbacks, Child, ContinuousReader, Kind};
use crate::error::{Error, ErrorKind, Result};
use crate::reader::{ReaderAction, ReaderEvent, Seq};
use crate::ring::{Op, Ring};

impl<C: Callbacks> ContinuousReader<C> {
    pub(super) fn retry_deferred(&mut self, ring: &mut Ring) -> Result<()> {
        while let Some(&a) = self.deferred.front() {
            if !self.try_submit(ring, a)? {
                break;
            }
            self.deferred.pop_front();
        }
        Ok(())
    }

    /// Submit a read (or multishot arm). `false`: no buffer yet, try again later.
    pub(super) fn try_submit(&mut self, ring: &mut Ring, a: ReaderAction) -> Result<bool> {
        let (seq, kind, op) = match a {
            ReaderAction::ReadAt { seq, offset, len } => {
                (seq, Kind::Read, self.read_op(offset, len))
            }
            // Streams ignore the offset.
            ReaderAction::Read { seq, len } => (seq, Kind::Read, self.read_op(0, len)),
            ReaderAction::ReadMultishot { seq, .. } => {
                let op = match self.provided.buf_ring(ring, &self.pool) {
                    Ok(br) => br.map(|br| Op::read_multishot(self.target, br)),
                    Err(e) => {
                        // Complete the read here, as the kernel would have: a failure
                        // for `on_failed`.
                        self.machine.handle(ReaderEvent::MultishotDone {
                            seq,
                            result: Err(e),
                            buf_id: None,
                            more: false,
                        })?;
                        return Ok(true);
                    }
                };
                (seq, Kind::Multishot, op)
            }
            _ => return Err(Error::invalid("not a read action")),
        };
        let Some(op) = op else {
            return Ok(false);
        };
        self.port.submit(ring, op, Child { kind, seq });
        Ok(true)
    }

    /// A read of `len` bytes at `offset` into a fresh slot, if one is free.
    fn read_op(&self, offset: u64, len: u32) -> Option<Op> {
        let buf = self.pool.try_get().ok()?;
        let op = Op::read_len(self.target, offset, buf, len as usize);
        Some(if self.probing { op.nowait() } else { op })
    }

    /// The machine's `Cancel { seq }`.
    pub(super) fn cancel_op(&mut self, ring: &mut Ring, seq: Seq) -> Result<()> {
        // Linear, like the machine's own lookup of `seq`: positional reads cancel only
        // when the reader is cancelled, and a stream has one operation in flight.
        if let Some(key) = self.port.find(|c| c.seq == seq) {
            // False when it already completed: its completion is on its way to us.
            self.port.cancel(ring, key);
            return Ok(());
        }
        let Some(pos) = self
            .deferred
            .iter()
            .position(|a| action_seq(a) == Some(seq))
        else {
            return Ok(());
        };
        // Never submitted: complete it here, as the kernel would have.
        let a = self.deferred.remove(pos);
        let result = Err(Error::new(ErrorKind::Cancelled));
        let ev = match a {
            Some(ReaderAction::ReadMultishot { .. }) => ReaderEvent::MultishotDone {
                seq,
                result,
                buf_id: None,
                more: false,
            },
            _ => ReaderEvent::ReadDone { seq, result },
        };
        self.machine.handle(ev)
    }
}

fn action_seq(a: &ReaderAction) -> Option<Seq> {
    match *a {
        ReaderAction::ReadAt { seq, .. }
        | ReaderAction::Read { seq, .. }
        | ReaderAction::ReadMultishot { seq, .. } => Some(seq),
        _ => None,
    }
}
