//! Positional reads (files, block devices): reads at advancing offsets, holes re-read after
//! short or failed reads, the ordering window, end of file and end of range.

use super::{Held, OpKind, Phase, ReaderMachine, Span};
use crate::error::{Error, Result};
use crate::reader::events::Seq;

impl ReaderMachine {
    pub(super) fn positional_done(&mut self, seq: Seq, offset: u64, len: u32, result: Result<u32>) {
        let mut n = match result {
            Ok(0) => {
                self.discard(seq, None);
                self.set_eof(offset);
                return;
            }
            Ok(n) => n,
            Err(e) => return self.positional_error(seq, offset, len, e),
        };
        if let Phase::Failing { at, .. } = self.phase {
            if offset >= at {
                // After the failure point: re-read on restart.
                self.discard(seq, None);
                self.add_hole(offset, u64::from(len));
                return;
            }
        }
        if let Some(eof) = self.eof_at {
            if offset >= eof {
                self.discard(seq, None);
                return;
            }
            // Data past a known EOF (the file changed size): keep the bytes before it.
            n = n.min(u32::try_from(eof - offset).unwrap_or(u32::MAX));
        }
        if n < len {
            let align = self.cfg.align;
            if align > 1 && n % align != 0 {
                self.set_eof(offset + u64::from(n));
            } else {
                self.add_hole(offset + u64::from(n), u64::from(len - n));
            }
        }
        self.deliver_or_hold(seq, offset, n);
    }

    /// Read `seq` of `[offset, offset + len)` failed with `e`.
    fn positional_error(&mut self, seq: Seq, offset: u64, len: u32, e: Error) {
        self.discard(seq, None);
        if e.raw_os_error() == Some(libc::EINTR) {
            self.add_hole(offset, u64::from(len));
            return;
        }
        match self.phase {
            Phase::Running => {
                self.add_hole(offset, u64::from(len));
                self.enter_failing(e, offset);
            }
            Phase::Failing { error, at } => {
                self.add_hole(offset, u64::from(len));
                if offset < at {
                    self.phase = Phase::Failing { error, at: offset };
                    self.discard_held_from(offset, true);
                }
            }
            // Cancelling: errors of cancelled reads are expected; nothing to report.
            Phase::Cancelling | Phase::AwaitingRestart { .. } | Phase::Done => {}
        }
    }

    pub(super) fn deliver_or_hold(&mut self, seq: Seq, offset: u64, n: u32) {
        if !self.cfg.ordered {
            self.deliver(seq, offset, n, None);
            return;
        }
        if offset < self.deliver_next {
            // Cannot happen (ranges are disjoint); never deliver out of order.
            self.discard(seq, None);
            return;
        }
        if offset != self.deliver_next {
            self.held.push(Held {
                seq,
                offset,
                len: n,
            });
            return;
        }
        self.deliver(seq, offset, n, None);
        self.deliver_next = offset + u64::from(n);
        while let Some(i) = self.held.iter().position(|h| h.offset == self.deliver_next) {
            let h = self.held.swap_remove(i);
            self.deliver(h.seq, h.offset, h.len, None);
            self.deliver_next = h.offset + u64::from(h.len);
        }
    }

    pub(super) fn add_hole(&mut self, offset: u64, len: u64) {
        if len > 0 {
            self.holes.push(Span { offset, len });
        }
    }

    /// Discard held reads at or after `from`; `rearm` keeps their ranges for a restart.
    pub(super) fn discard_held_from(&mut self, from: u64, rearm: bool) {
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].offset >= from {
                let h = self.held.swap_remove(i);
                self.discard(h.seq, None);
                if rearm {
                    self.add_hole(h.offset, u64::from(h.len));
                }
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn set_eof(&mut self, at: u64) {
        let eof = self.eof_at.map_or(at, |e| e.min(at));
        self.eof_at = Some(eof);
        self.holes.retain(|h| h.offset < eof);
        self.discard_held_from(eof, false);
    }

    /// `n` rounded up to the direct-I/O alignment.
    pub(super) fn round_to_align(&self, n: u64) -> u64 {
        let a = u64::from(self.cfg.align.max(1));
        n.div_ceil(a).saturating_mul(a)
    }

    /// Positional: where reading must stop — the range's end, end of file once seen, and
    /// at most the largest file position (`i64::MAX`, rounded down to the alignment), so
    /// a range that runs that far ends there instead of asking the kernel for more.
    pub(super) fn limit(&self) -> u64 {
        let a = u64::from(self.cfg.align.max(1));
        let max_pos = i64::MAX as u64 - (i64::MAX as u64) % a;
        let end = self.cfg.end.unwrap_or(u64::MAX).min(max_pos);
        self.eof_at.map_or(end, |e| e.min(end))
    }

    pub(super) fn issue_positional(&mut self) {
        let pending = self.cfg.pending_reads as usize;
        if self.unacked.len() >= self.cfg.max_unacked as usize {
            return;
        }
        let limit = self.limit();
        while self.ops.len() < pending {
            let window_full = self.cfg.ordered && self.ops.len() + self.held.len() >= self.window;
            // Lowest hole first: it unblocks ordered delivery soonest.
            let lowest = self
                .holes
                .iter()
                .enumerate()
                .min_by_key(|(_, h)| h.offset)
                .map(|(i, h)| (i, *h));
            if let Some((i, hole)) = lowest {
                if window_full && hole.offset != self.deliver_next {
                    break;
                }
                self.holes.swap_remove(i);
                if hole.offset >= limit {
                    continue;
                }
                // Kept a multiple of the alignment: a hole clipped at an unaligned EOF
                // (e.g. a held buffer re-armed on restart) is read whole-block, and a
                // direct read past the end just comes back short.
                let len = self.round_to_align(hole.len.min(limit - hole.offset));
                // A hole is never longer than one read.
                let len = u32::try_from(len).unwrap_or(self.cfg.transfer_len);
                self.issue(OpKind::ReadAt {
                    offset: hole.offset,
                    len,
                });
                continue;
            }
            if self.cursor >= limit || window_full {
                break;
            }
            let len =
                u64::from(self.cfg.transfer_len).min(self.round_to_align(limit - self.cursor));
            let offset = self.cursor;
            self.cursor += len;
            self.issue(OpKind::ReadAt {
                offset,
                len: len as u32,
            });
        }
    }
}
