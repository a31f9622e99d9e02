//! The state machines perform no heap allocation in steady state: after construction and
//! a warm-up, thousands of read/deliver/ack cycles allocate nothing. Counted per thread by a
//! wrapping global allocator (its own test binary, so nothing else is affected).

use iocomplete::fifo::{FifoAction, FifoEvent, FifoMachine};
use iocomplete::reader::{ReaderAction, ReaderConfig, ReaderEvent, ReaderMachine};
use iocomplete::Error;

#[path = "common/alloc.rs"]
mod alloc;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

use alloc::thread_allocations as allocs;

/// A driver that serves every read in full (completing the oldest first, or the newest
/// first when `reverse`) and acknowledges every delivery at once. Its in-flight table is a
/// fixed array, so the driver itself does not allocate either.
struct Driver {
    in_flight: [(u64, u32); 64],
    n: usize,
    reverse: bool,
}

impl Driver {
    /// Run `cycles` completions; returns the deliveries seen.
    fn run(&mut self, m: &mut ReaderMachine, cycles: usize) -> usize {
        let mut delivered = 0;
        for _ in 0..cycles {
            while let Some(a) = m.poll_action() {
                match a {
                    ReaderAction::ReadAt { seq, len, .. } | ReaderAction::Read { seq, len } => {
                        self.in_flight[self.n] = (seq.get(), len);
                        self.n += 1;
                    }
                    ReaderAction::Deliver(d) => {
                        delivered += 1;
                        m.handle(ReaderEvent::Delivered { seq: d.seq }).unwrap();
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(self.n > 0, "nothing in flight");
            let i = if self.reverse { self.n - 1 } else { 0 };
            let (seq, len) = self.in_flight[i];
            self.in_flight.copy_within(i + 1..self.n, i);
            self.n -= 1;
            let seq = iocomplete::reader::Seq::new(seq);
            m.handle(ReaderEvent::ReadDone {
                seq,
                result: Ok(len),
            })
            .unwrap();
        }
        delivered
    }
}

#[test]
fn reader_steady_state_allocates_nothing() {
    let configs = [
        ReaderConfig::positional(4096).pending_reads(8),
        ReaderConfig::positional(4096)
            .align(512)
            .pending_reads(8)
            .ordered(true),
        ReaderConfig::stream(4096),
    ];
    for cfg in configs {
        for reverse in [false, true] {
            let before = allocs();
            let mut m = ReaderMachine::new(cfg).unwrap();
            assert!(
                allocs() > before,
                "the counter sees construction's allocations"
            );
            let mut d = Driver {
                in_flight: [(0, 0); 64],
                n: 0,
                reverse,
            };
            d.run(&mut m, 100); // warm-up
            let before = allocs();
            let delivered = d.run(&mut m, 10_000);
            assert_eq!(allocs() - before, 0, "{cfg:?} reverse={reverse}");
            assert!(delivered >= 9_000, "{delivered}");
        }
    }
}

#[test]
fn multishot_steady_state_allocates_nothing() {
    let mut m = ReaderMachine::new(ReaderConfig::stream(2048).multishot(true)).unwrap();
    let mut armed = None;
    let mut run = |m: &mut ReaderMachine, cycles: u32| {
        for i in 0..cycles {
            while let Some(a) = m.poll_action() {
                match a {
                    ReaderAction::ReadMultishot { seq, .. } => armed = Some(seq),
                    ReaderAction::Deliver(d) => {
                        m.handle(ReaderEvent::Delivered { seq: d.seq }).unwrap();
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            let seq = armed.unwrap();
            let ev = if i % 7 == 6 {
                ReaderEvent::MultishotDone {
                    seq,
                    result: Err(iocomplete::Error::from_errno(libc::ENOBUFS)),
                    buf_id: None,
                    more: false,
                }
            } else {
                ReaderEvent::MultishotDone {
                    seq,
                    result: Ok(100),
                    buf_id: Some(i as u16),
                    more: true,
                }
            };
            m.handle(ev).unwrap();
        }
    };
    run(&mut m, 100);
    let before = allocs();
    run(&mut m, 10_000);
    assert_eq!(allocs() - before, 0);
}

#[test]
fn fifo_steady_state_allocates_nothing() {
    let mut m = FifoMachine::new();
    let run = |m: &mut FifoMachine, txns: u32| {
        let mut k = 0u32;
        for _ in 0..txns {
            m.receive(100, None).unwrap();
            loop {
                k += 1;
                match m.poll_action().unwrap() {
                    FifoAction::Begin { .. } | FifoAction::End { .. } => {}
                    FifoAction::Read { seq, len, .. } => {
                        let result = if k % 3 == 0 {
                            Err(Error::from_errno(libc::EAGAIN))
                        } else {
                            Ok(len.min(30))
                        };
                        m.handle(FifoEvent::ReadDone { seq, result }).unwrap();
                    }
                    FifoAction::ArmPoll { seq } => {
                        let result = Ok(libc::POLLIN as u32);
                        m.handle(FifoEvent::PollDone { seq, result }).unwrap();
                    }
                    FifoAction::Complete(o) => {
                        assert_eq!(o.bytes, 100);
                        break;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    };
    run(&mut m, 10);
    let before = allocs();
    run(&mut m, 2_000);
    assert_eq!(allocs() - before, 0);
}
