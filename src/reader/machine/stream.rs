//! Stream reads (pipes, FIFOs, sockets, ttys): one single-shot read at a time with a
//! readiness poll after `EAGAIN`, or one armed multishot read whose completions each carry
//! a provided buffer.

use super::{OpKind, Phase, ReaderMachine};
use crate::error::{Error, ErrorKind, Result};
use crate::reader::events::{ReaderAction, Seq};

impl ReaderMachine {
    pub(super) fn stream_done(&mut self, seq: Seq, result: Result<u32>) {
        match result {
            Ok(0) => {
                self.discard(seq, None);
                self.stream_eof = true;
            }
            Ok(_) if matches!(self.phase, Phase::Failing { .. }) => self.discard(seq, None),
            Ok(n) => self.deliver_stream(seq, n, None),
            Err(e) => {
                self.discard(seq, None);
                self.stream_error(e);
            }
        }
    }

    /// A stream read (single-shot or multishot, already ended) failed with `e`.
    pub(super) fn stream_error(&mut self, e: Error) {
        if self.phase != Phase::Running {
            return;
        }
        match e.raw_os_error() {
            Some(libc::EAGAIN) => self.issue(OpKind::Poll),
            Some(libc::EINTR | libc::ENOBUFS) => {} // pump re-arms
            _ => {
                let at = self.cursor;
                self.enter_failing(e, at);
            }
        }
    }

    pub(super) fn on_multishot(
        &mut self,
        seq: Seq,
        result: Result<u32>,
        buf_id: Option<u16>,
        more: bool,
    ) -> Result<()> {
        let i = self.find_op(seq)?;
        let OpKind::Multishot { len } = self.ops[i].kind else {
            return Err(Error::new(ErrorKind::EventMismatch));
        };
        if result.is_ok_and(|n| n > len) {
            return Err(Error::new(ErrorKind::ExcessBytes));
        }
        if result.is_ok_and(|n| n > 0) && buf_id.is_none() {
            return Err(Error::invalid(
                "multishot data completion without a buffer id",
            ));
        }
        let cancelling = self.ops[i].cancelling;
        if !more {
            self.ops.swap_remove(i);
        }
        if let Ok(n @ 1..) = result {
            if matches!(self.phase, Phase::Failing { .. }) {
                self.discard(seq, buf_id);
            } else {
                self.deliver_stream(seq, n, buf_id);
            }
            return Ok(());
        }
        if buf_id.is_some() {
            self.discard(seq, buf_id);
        }
        let Err(e) = result else {
            self.stream_eof = true;
            self.cancel_if_armed(i, more);
            return Ok(());
        };
        if cancelling {
            // We cancelled it (cancel, EOF, or an earlier error): its errors mean nothing.
            return Ok(());
        }
        if more {
            // The kernel ends a multishot read on any error; if it says otherwise, only a
            // hard error needs acting on: cancel it and let the final completion re-arm.
            if !matches!(
                e.raw_os_error(),
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
            ) {
                self.cancel_if_armed(i, more);
                self.stream_error(e);
            }
        } else {
            self.stream_error(e);
        }
        Ok(())
    }

    pub(super) fn cancel_if_armed(&mut self, i: usize, more: bool) {
        if more && !self.ops[i].cancelling {
            self.ops[i].cancelling = true;
            let seq = self.ops[i].seq;
            self.actions.push_back(ReaderAction::Cancel { seq });
        }
    }

    pub(super) fn on_poll_done(&mut self, seq: Seq, result: Result<u32>) -> Result<()> {
        let i = self.find_op(seq)?;
        if self.ops[i].kind != OpKind::Poll {
            return Err(Error::new(ErrorKind::EventMismatch));
        }
        self.ops.swap_remove(i);
        if let Err(e) = result {
            if self.phase == Phase::Running && e.raw_os_error() != Some(libc::EINTR) {
                let at = self.cursor;
                self.enter_failing(e, at);
            }
        }
        // Readable, hung up or in error: the next read tells which (pump issues it).
        Ok(())
    }

    pub(super) fn deliver_stream(&mut self, seq: Seq, n: u32, buf_id: Option<u16>) {
        // Multishot completions share the read's seq; give each delivery its own.
        let dseq = if buf_id.is_some() {
            self.alloc_seq()
        } else {
            seq
        };
        let offset = self.cursor;
        self.cursor = self.cursor.saturating_add(u64::from(n));
        self.deliver(dseq, offset, n, buf_id);
    }

    pub(super) fn issue_stream(&mut self) {
        if !self.ops.is_empty()
            || self.stream_eof
            || self.unacked.len() >= self.cfg.max_unacked as usize
        {
            return;
        }
        let len = self.cfg.transfer_len;
        if self.cfg.multishot {
            self.issue(OpKind::Multishot { len });
        } else {
            self.issue(OpKind::Read { len });
        }
    }
}
