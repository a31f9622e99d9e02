//! The DMA `Transaction` machine: arbitrary segment lists and limits (invalid ones must be
//! refused with an error), then arbitrary interleavings of transfer completions (any
//! status, any byte count, final or not), stop, timeout, timer cancellation, impossible
//! events and polls. Checked throughout: the DMA part ends (`true`) at most once and
//! exactly once when the transaction is driven to its end; the request completes exactly
//! once, only after the DMA part ended; bytes transferred equal the sum of reported bytes
//! and never exceed the total; no memory byte moves twice; each segment's
//! `segment_moved` is exactly the prefix of it that moved; buffers are releasable only
//! with nothing in flight; a refused event changes nothing; the final status follows the
//! rules (first device error wins, else the first of stop/timeout, else cancelled/success).
#![no_main]

use iocomplete::dma::{
    Action, Config, Direction, Event, Segment, Transaction, TransferId, TransferStatus,
};
use iocomplete::gate::Status;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// (device offset in 64-byte units or contiguous with the previous, length ≤ 1 KiB).
    segments: Vec<(bool, u16, u16)>,
    write: bool,
    max_transfer: u16,
    max_segments: u8,
    max_in_flight: u8,
    timer: bool,
    events: Vec<Ev>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum St {
    Complete,
    Cancelled,
    Error(u8),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Ev {
    /// Complete the in-flight transfer number `which` (mod count) with `bytes` (mod len+1,
    /// or all of it).
    Transfer {
        which: u8,
        status: St,
        bytes: u16,
        full: bool,
        last: bool,
    },
    Stop,
    Timeout,
    TimerCancelled,
    Poll(u8),
    /// An impossible completion: unknown id or too many bytes.
    Bogus {
        id: u32,
        extra: u16,
    },
}

const MAX_SEGS: usize = 12;
const MAX_SEG_LEN: u64 = 1024;

struct Harness<'a> {
    segs: &'a [Segment],
    tx: Transaction<&'a [Segment]>,
    /// Submitted (polled) transfers whose completion has not been fed.
    in_flight: Vec<iocomplete::dma::Transfer>,
    /// One past the highest transfer id submitted (ids are sequential; ≤ 2³² here).
    issued: u32,
    cancel_timer_asked: bool,
    timer_resolved: bool,
    ended: u32,
    completes: u32,
    reported: u64,
    moved: Vec<Vec<bool>>,
    first_error: Option<i32>,
    /// First of stop / timeout that ran while the request was undecided.
    first_abort: Option<Status>,
    saw_cancelled: bool,
    short_end: bool,
}

impl Harness<'_> {
    fn poll(&mut self, n: usize) {
        for _ in 0..n {
            let Some(a) = self.tx.poll_action() else {
                return;
            };
            match a {
                Action::Submit(t) => {
                    assert!(!self.tx.buffers_releasable(), "submit after the end");
                    assert!(t.len > 0);
                    assert!(t.segment_count as u32 <= self.tx.config().max_segments_count());
                    assert!(t.len <= self.tx.config().max_transfer_len());
                    let mut dev = t.device_offset;
                    let (mut sum, mut count) = (0, 0);
                    for p in t.pieces(self.segs) {
                        let s = self.segs[p.segment];
                        assert!(
                            p.len > 0 && p.offset + p.len <= s.len,
                            "piece {p:?} out of {s:?}"
                        );
                        assert_eq!(s.device_offset + p.offset, dev, "pieces not contiguous");
                        dev += p.len;
                        sum += p.len;
                        count += 1;
                    }
                    assert_eq!((sum, count), (t.len, t.segment_count), "pieces of {t:?}");
                    self.issued = self.issued.max(t.id.get() + 1);
                    self.in_flight.push(t);
                }
                Action::Cancel(id) => {
                    // A cancel names a transfer that is in flight now: one whose completion
                    // came back while the cancel was queued is withdrawn by the machine.
                    assert!(id.get() < self.issued, "cancel of {id:?}, never submitted");
                    assert!(
                        self.in_flight.iter().any(|t| t.id == id),
                        "stale cancel of {id:?}: its completion already came back"
                    );
                }
                Action::CancelTimer => {
                    // Never stale: a timer that fired (or whose cancel was reported) while the
                    // request was queued has its request withdrawn by the machine.
                    assert!(self.tx.config().has_timer() && self.tx.buffers_releasable());
                    assert!(
                        !self.timer_resolved,
                        "stale CancelTimer: the timer is resolved"
                    );
                    assert!(!self.cancel_timer_asked, "CancelTimer twice");
                    self.cancel_timer_asked = true;
                }
                Action::Complete(c) => {
                    self.completes += 1;
                    assert_eq!(self.completes, 1, "completed twice");
                    assert_eq!(self.ended, 1, "completed before the DMA part ended");
                    assert!(self.tx.buffers_releasable() && self.in_flight.is_empty());
                    assert_eq!(c.bytes, self.reported);
                }
            }
        }
    }

    fn feed(&mut self, ev: Event) {
        let before = (
            self.tx.bytes_transferred(),
            self.tx.in_flight(),
            self.tx.status(),
        );
        let was_finished = self.tx.buffers_releasable();
        let undecided = self.tx.status().is_none();
        match self.tx.handle(ev) {
            Ok(ended) => {
                assert_eq!(ended, !was_finished && self.tx.buffers_releasable());
                if ended {
                    self.ended += 1;
                    assert_eq!(self.ended, 1, "DMA part ended twice");
                }
                match ev {
                    Event::Stop if undecided && !was_finished => {
                        self.first_abort.get_or_insert(Status::Cancelled);
                    }
                    Event::Timeout => {
                        self.timer_resolved = true;
                        if undecided && !was_finished {
                            self.first_abort.get_or_insert(Status::TimedOut);
                        }
                    }
                    Event::TimerCancelled => self.timer_resolved = true,
                    _ => {}
                }
            }
            Err(_) => {
                let after = (
                    self.tx.bytes_transferred(),
                    self.tx.in_flight(),
                    self.tx.status(),
                );
                assert_eq!(before, after, "a refused event changed the transaction");
            }
        }
        if self.tx.buffers_releasable() {
            assert_eq!(self.tx.in_flight(), 0);
        }
        assert!(self.tx.bytes_transferred() <= self.tx.total_len());
        assert_eq!(self.tx.bytes_transferred(), self.reported);
        // A segment's count is exactly the prefix of it that moved, whatever the order of
        // completions, stops and errors: never a byte after a gap (stale memory).
        for (i, m) in self.moved.iter().enumerate() {
            let prefix = m.iter().position(|b| !b).unwrap_or(m.len()) as u64;
            assert_eq!(self.tx.segment_moved(i), prefix, "segment {i}");
        }
    }

    fn complete(&mut self, k: usize, status: TransferStatus, bytes: u64, last: bool) {
        let t = self.in_flight.swap_remove(k);
        let mut left = bytes;
        for p in t.pieces(self.segs) {
            let n = left.min(p.len);
            for b in &mut self.moved[p.segment][p.offset as usize..(p.offset + n) as usize] {
                assert!(!*b, "a byte of segment {} moved twice", p.segment);
                *b = true;
            }
            left -= n;
        }
        self.reported += bytes;
        if !self.tx.buffers_releasable() {
            match status {
                TransferStatus::Error(e) => {
                    self.first_error.get_or_insert(e);
                }
                TransferStatus::Complete if bytes == 0 => {
                    if self.tx.direction() == Direction::Write {
                        self.first_error.get_or_insert(libc::EIO);
                    } else {
                        self.short_end = true;
                    }
                }
                TransferStatus::Cancelled => self.saw_cancelled = true,
                _ => {}
            }
            if last || bytes < t.len {
                self.short_end = true;
            }
        }
        let ev = if last {
            Event::CompletedFinal {
                id: t.id,
                status,
                bytes,
            }
        } else {
            Event::TransferCompleted {
                id: t.id,
                status,
                bytes,
            }
        };
        self.feed(ev);
    }
}

fuzz_target!(|i: Input| {
    let mut segs = Vec::new();
    let mut next = 0u64;
    for &(contiguous, at, len) in i.segments.iter().take(MAX_SEGS) {
        let off = if contiguous { next } else { u64::from(at) * 64 };
        let len = u64::from(len) % (MAX_SEG_LEN + 1);
        segs.push(Segment::new(off, len));
        next = off + len;
    }
    let config = Config::new()
        .max_transfer(u64::from(i.max_transfer) % 4097)
        .max_segments(u32::from(i.max_segments) % 20)
        .max_in_flight(u32::from(i.max_in_flight) % 10)
        .timer(i.timer);
    let direction = if i.write {
        Direction::Write
    } else {
        Direction::Read
    };
    let tx = match Transaction::new(&segs[..], direction, config) {
        Ok(tx) => tx,
        Err(_) => {
            let total: u64 = segs.iter().map(|s| s.len).sum();
            assert!(
                total == 0
                    || config.max_transfer_len() == 0
                    || config.max_segments_count() == 0
                    || config.max_in_flight_count() == 0,
                "valid transaction refused"
            );
            return;
        }
    };
    let total = tx.total_len();
    let mut h = Harness {
        segs: &segs,
        tx,
        in_flight: Vec::new(),
        issued: 0,
        cancel_timer_asked: false,
        timer_resolved: false,
        ended: 0,
        completes: 0,
        reported: 0,
        moved: segs.iter().map(|s| vec![false; s.len as usize]).collect(),
        first_error: None,
        first_abort: None,
        saw_cancelled: false,
        short_end: false,
    };
    for &ev in i.events.iter().take(512) {
        match ev {
            Ev::Poll(n) => h.poll(usize::from(n % 8) + 1),
            Ev::Transfer {
                which,
                status,
                bytes,
                full,
                last,
            } => {
                if h.in_flight.is_empty() {
                    continue;
                }
                let k = usize::from(which) % h.in_flight.len();
                let len = h.in_flight[k].len;
                let bytes = if full {
                    len
                } else {
                    u64::from(bytes) % (len + 1)
                };
                let status = match status {
                    St::Complete => TransferStatus::Complete,
                    St::Cancelled => TransferStatus::Cancelled,
                    St::Error(e) => TransferStatus::Error(1 + i32::from(e % 130)),
                };
                h.complete(k, status, bytes, last);
            }
            Ev::Stop => h.feed(Event::Stop),
            Ev::Timeout => h.feed(Event::Timeout),
            Ev::TimerCancelled => h.feed(Event::TimerCancelled),
            Ev::Bogus { id, extra } => {
                if let Some(t) = h.in_flight.first().copied() {
                    if extra % 2 == 0 {
                        let bytes = t.len + 1 + u64::from(extra);
                        h.feed(Event::TransferCompleted {
                            id: t.id,
                            status: TransferStatus::Complete,
                            bytes,
                        });
                        continue;
                    }
                }
                if !h.in_flight.iter().any(|t| t.id.get() == id) {
                    h.feed(Event::TransferCompleted {
                        id: TransferId::new(id),
                        status: TransferStatus::Complete,
                        bytes: 0,
                    });
                }
            }
        }
    }
    // Drive the transaction to its end as a driver would: every transfer completes in
    // full, a timer cancellation asked for comes back.
    let mut steps = 0u64;
    loop {
        h.poll(usize::MAX);
        steps += 1;
        assert!(steps <= 4 * total + 64, "transaction does not end");
        if !h.in_flight.is_empty() {
            let len = h.in_flight[0].len;
            h.complete(0, TransferStatus::Complete, len, false);
        } else if h.cancel_timer_asked && !h.timer_resolved {
            h.feed(Event::TimerCancelled);
        } else {
            break;
        }
    }
    assert_eq!(h.ended, 1, "the DMA part must end exactly once");
    assert_eq!(h.completes, 1, "the request must complete exactly once");
    assert!(h.tx.is_complete() && h.tx.buffers_releasable() && h.tx.in_flight() == 0);
    let out = h.tx.outcome().unwrap();
    assert_eq!(out.bytes, h.reported);
    assert!(out.bytes <= total);
    let want = if let Some(e) = h.first_error {
        Status::Failed(e)
    } else if let Some(s) = h.first_abort {
        s
    } else if h.saw_cancelled {
        Status::Cancelled
    } else {
        Status::Success
    };
    assert_eq!(h.tx.status(), Some(want), "final status");
    // A clean run moves every byte exactly once.
    if want == Status::Success && !h.short_end {
        assert_eq!(out.bytes, total, "clean run moved {} of {total}", out.bytes);
        assert!(h.moved.iter().all(|m| m.iter().all(|&b| b)));
    }
});
