//! Steady-state operation of the sans-I/O machines performs zero heap allocations: proven
//! with a counting global allocator (per thread, so other test threads do not interfere).

use iocomplete::dma::{self, Segment, Transaction};
use iocomplete::gate::{CompletionGate, Status};
use iocomplete::split::{Mode, SplitAction, SplitEvent, SplitMachine, TransferPlan};
use iocomplete::Direction;

#[path = "common/alloc.rs"]
mod alloc;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

use alloc::thread_allocations as allocations;

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
        let before = allocations();
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
            allocations() - before,
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
    let before = allocations();
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
    assert_eq!(allocations() - before, 0);
}

#[test]
fn gate_does_not_allocate() {
    let before = allocations();
    for _ in 0..1000 {
        let g = CompletionGate::with_refs(3).unwrap();
        g.begin_completion(Status::Cancelled);
        g.release().unwrap();
        g.try_acquire().unwrap();
        g.release().unwrap();
        g.release().unwrap();
        assert_eq!(g.complete(Status::Success, true), Ok(Some(Status::Success)));
    }
    assert_eq!(allocations() - before, 0);
}
