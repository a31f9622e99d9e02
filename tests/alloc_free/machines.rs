//! The sans-I/O machines (reader, multishot reader, FIFO, split, DMA transaction) and the
//! completion gate perform no heap allocation in steady state: after construction (and a
//! warm-up where the machine sizes lazily), thousands of cycles allocate nothing.

use iocomplete::dma::{self, Segment, Transaction};
use iocomplete::fifo::{FifoAction, FifoEvent, FifoMachine};
use iocomplete::gate::{CompletionGate, Status};
use iocomplete::reader::{ReaderAction, ReaderConfig, ReaderEvent, ReaderMachine};
use iocomplete::split::{Mode, SplitAction, SplitEvent, SplitMachine, TransferPlan};
use iocomplete::{Direction, Error};

use crate::common::alloc::thread_allocations as allocs;

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

/// Drive one split request to completion with short transfers on every other child, and
/// return the number of actions processed.
fn run_split(m: &mut SplitMachine, short: bool) -> u64 {
    let mut steps = 0;
    loop {
        match m.poll_action() {
            Some(SplitAction::Submit { child, len, .. }) => {
                let moved = if short && len > 512 { len / 2 } else { len };
                m.handle(SplitEvent::ChildCompleted {
                    child,
                    result: Ok(moved),
                })
                .unwrap();
            }
            Some(SplitAction::Complete(c)) => {
                assert!(c.status.is_ok());
                return steps;
            }
            Some(SplitAction::Cancel { .. }) => unreachable!("no cancel in this run"),
            Some(SplitAction::ArmTimer(_) | SplitAction::CancelTimer) => {
                unreachable!("no deadline in this run")
            }
            None => unreachable!("stalled"),
        }
        steps += 1;
    }
}

#[test]
fn split_machine_steady_state_does_not_allocate() {
    let plan = TransferPlan::builder()
        .max_chunk(64 * 1024)
        .align(512)
        .build()
        .unwrap();
    for mode in [Mode::Serial, Mode::Parallel { max_in_flight: 8 }] {
        // Only construction allocates (the child table and the action queue, sized for
        // the worst case): no warm-up, the first request counts too.
        let mut m = SplitMachine::new(plan, mode, Direction::Read, 0, 1 << 20, None).unwrap();
        let before = allocs();
        let mut steps = run_split(&mut m, false);
        for round in 0..20u64 {
            m.restart(round * 4096, 8 << 20).unwrap();
            steps += run_split(&mut m, round % 2 == 1);
        }
        // Errors and cancels too: the first error cancels the rest, queued submits are
        // withdrawn in place.
        m.restart(0, 8 << 20).unwrap();
        let mut first = None;
        while let Some(a) = m.poll_action() {
            if let SplitAction::Submit { child, .. } = a {
                first.get_or_insert(child);
            }
        }
        m.child_completed(
            first.unwrap(),
            Err(iocomplete::Error::from_errno(libc::EIO)),
        )
        .unwrap();
        m.handle(SplitEvent::Cancel).unwrap();
        while let Some(a) = m.poll_action() {
            if let SplitAction::Cancel { child } = a {
                let cancelled = iocomplete::Error::from_errno(libc::ECANCELED);
                m.child_completed(child, Err(cancelled)).unwrap();
            }
        }
        assert!(m.is_complete());
        assert_eq!(
            allocs() - before,
            0,
            "{mode:?}: allocated over {steps} steps"
        );
        assert!(steps > 2_000);
    }
}

#[test]
fn dma_transfers_do_not_allocate() {
    let segments: Vec<Segment> = (0..256u64)
        .map(|i| Segment::new(i * 4096 + (i / 16) * 65536, 4096))
        .collect();
    let config = dma::DmaConfig::new()
        .max_transfer(32 * 1024)
        .max_segments(4)
        .max_in_flight(4)
        .timer(true);
    let mut tx = Transaction::new(&segments[..], Direction::Write, config).unwrap();
    let before = allocs();
    let mut finals = 0;
    let mut short = false;
    while let Some(a) = tx.poll_action() {
        match a {
            dma::DmaAction::Submit(t) => {
                let pieces = t.pieces(&segments).count();
                assert_eq!(pieces, t.segment_count);
                short = !short;
                let moved = if short { (t.len / 3).max(1) } else { t.len };
                finals += u32::from(tx.transfer_completed(t.id, Ok(()), moved).unwrap());
            }
            dma::DmaAction::CancelTimer => tx.timer_cancelled().unwrap(),
            dma::DmaAction::Complete(c) => assert_eq!((c.status, c.bytes), (Ok(()), 256 * 4096)),
            dma::DmaAction::Cancel(_) => unreachable!(),
        }
    }
    assert_eq!(finals, 1);
    assert!(tx.is_complete());
    assert_eq!(allocs() - before, 0);
}

#[test]
fn gate_does_not_allocate() {
    let before = allocs();
    for _ in 0..1000 {
        let g = CompletionGate::with_refs(3).unwrap();
        g.begin_completion(Status::Cancelled);
        g.release().unwrap();
        g.try_acquire().unwrap();
        g.release().unwrap();
        g.release().unwrap();
        assert_eq!(g.complete(Status::Success, true), Ok(Some(Status::Success)));
    }
    assert_eq!(allocs() - before, 0);
}
