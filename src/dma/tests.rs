//! Tests for the DMA transaction: unit cases, a naive reference for transfer planning, a
//! randomized simulation of a device, and arbitrary event sequences.

use super::*;
use crate::error::{Error, ErrorKind, Result};
use crate::gate::Status;
use crate::ring::{Direction, MAX_TRANSFER};
use fastrand::Rng;

fn drain<S: AsRef<[Segment]>>(tx: &mut Transaction<S>) -> Vec<DmaAction> {
    std::iter::from_fn(|| tx.poll_action()).collect()
}

fn submits(actions: &[DmaAction]) -> Vec<Transfer> {
    actions
        .iter()
        .filter_map(|a| match a {
            DmaAction::Submit(t) => Some(*t),
            _ => None,
        })
        .collect()
}

/// Drain the actions: the transfers they submit.
fn submitted<S: AsRef<[Segment]>>(tx: &mut Transaction<S>) -> Vec<Transfer> {
    submits(&drain(tx))
}

fn completion(actions: &[DmaAction]) -> Option<DmaOutcome> {
    actions.iter().find_map(|a| match a {
        DmaAction::Complete(c) => Some(*c),
        _ => None,
    })
}

/// Drain the actions: the completion they must hold.
fn done<S: AsRef<[Segment]>>(tx: &mut Transaction<S>) -> DmaOutcome {
    completion(&drain(tx)).unwrap()
}

/// Success with `bytes` moved.
const fn ok(bytes: u64) -> DmaOutcome {
    DmaOutcome {
        status: Ok(()),
        bytes,
    }
}

/// Segments from (device offset, length) pairs.
fn segs<const N: usize>(list: [(u64, u64); N]) -> [Segment; N] {
    list.map(|(offset, len)| Segment::new(offset, len))
}

/// A read of `segs`.
fn read_tx(segs: &[Segment], config: DmaConfig) -> Transaction<&[Segment]> {
    Transaction::new(segs, Direction::Read, config).unwrap()
}

fn pieces(t: &Transfer, segs: &[Segment]) -> Vec<(usize, u64, u64)> {
    t.pieces(segs)
        .map(|p| (p.segment, p.offset, p.len))
        .collect()
}

const OK: Result<()> = Ok(());

const CANCELLED: Result<()> = Err(Error::new(ErrorKind::Cancelled));

fn errno(e: i32) -> Result<()> {
    Err(Error::from_errno(e))
}

/// Run a transaction to the end with every transfer moving all its bytes; returns the
/// transfers as (device offset, len, pieces).
type Shape = (u64, u64, Vec<(usize, u64, u64)>);

fn run_full(segs: &[Segment], config: DmaConfig) -> Vec<Shape> {
    let mut tx = Transaction::new(segs, Direction::Write, config).unwrap();
    let mut out = Vec::new();
    let mut finals = 0;
    loop {
        let actions = drain(&mut tx);
        if let Some(c) = completion(&actions) {
            assert_eq!(c.status, Ok(()));
            assert_eq!(c.bytes, tx.total_len());
            break;
        }
        for t in submits(&actions) {
            out.push((t.device_offset, t.len, pieces(&t, segs)));
            assert_eq!(t.segment_count, t.pieces(segs).count());
            finals += u32::from(tx.transfer_completed(t.id, OK, t.len).unwrap());
        }
    }
    assert_eq!(finals, 1);
    out.sort();
    out
}

/// The naive model: walk the list byte by byte; a byte joins the current transfer if it
/// is device-contiguous with it and no limit breaks.
fn naive(segs: &[Segment], max_transfer: u64, max_segments: u32) -> Vec<Shape> {
    let mut out: Vec<Shape> = Vec::new();
    let mut last_seg = usize::MAX;
    for (i, s) in segs.iter().enumerate() {
        for b in 0..s.len {
            let dev = s.device_offset + b;
            let joins = out.last().is_some_and(|(d, l, p)| {
                d + l == dev
                    && *l < max_transfer
                    && (last_seg == i || (p.len() as u64) < u64::from(max_segments))
            });
            if joins {
                let (_, l, p) = out.last_mut().unwrap();
                *l += 1;
                if last_seg == i {
                    p.last_mut().unwrap().2 += 1;
                } else {
                    p.push((i, b, 1));
                }
            } else {
                out.push((dev, 1, vec![(i, b, 1)]));
            }
            last_seg = i;
        }
    }
    out.sort();
    out
}

fn random_list(rng: &mut Rng) -> Vec<Segment> {
    let n = 1 + rng.u64(..8) as usize;
    let mut segs = Vec::with_capacity(n);
    let mut dev = rng.u64(..100);
    for _ in 0..n {
        if rng.u64(..2) == 0 {
            dev = rng.u64(..1000);
        }
        let len = if rng.u64(..6) == 0 {
            0
        } else {
            1 + rng.u64(..40)
        };
        segs.push(Segment::new(dev, len));
        dev += len;
    }
    segs
}

#[test]
fn planning_matches_naive_model() {
    let mut rng = Rng::with_seed(0xDEAD_BEEF);
    let cases = if cfg!(miri) { 30 } else { 2_000 };
    for case in 0..cases {
        let segs = random_list(&mut rng);
        if segs.iter().all(|s| s.len == 0) {
            continue;
        }
        let max_transfer = 1 + rng.u64(..60);
        let max_segments = 1 + rng.u64(..4) as u32;
        let in_flight = 1 + rng.u64(..3) as u32;
        let config = DmaConfig::new()
            .max_transfer(max_transfer)
            .max_segments(max_segments)
            .max_in_flight(in_flight);
        assert_eq!(
            run_full(&segs, config),
            naive(&segs, max_transfer, max_segments),
            "case {case}: {segs:?} {config:?}"
        );
    }
}

#[test]
fn serial_transfers_report_final_once_and_buffers_wait_for_it() {
    let segs = segs([(0, 100), (100, 50), (500, 30)]);
    let mut tx = read_tx(&segs, DmaConfig::new());
    let a = submitted(&mut tx);
    assert_eq!(a.len(), 1, "one transfer at a time by default");
    assert_eq!(
        (a[0].device_offset, a[0].len, pieces(&a[0], &segs)),
        (0, 150, vec![(0, 0, 100), (1, 0, 50)])
    );
    assert!(!tx.buffers_releasable());
    assert!(!tx.transfer_completed(a[0].id, OK, 150).unwrap());
    let b = submitted(&mut tx);
    assert_eq!((b[0].device_offset, b[0].len), (500, 30));
    assert!(!tx.buffers_releasable());
    assert!(tx.transfer_completed(b[0].id, OK, 30).unwrap());
    assert!(tx.buffers_releasable());
    let c = done(&mut tx);
    assert_eq!(c, ok(180));
    assert_eq!(tx.status(), Some(Status::Success));
    assert_eq!(tx.outcome(), Some(c));
}

#[test]
fn long_segment_is_split_and_segment_count_bounded() {
    let segs = segs([(0, 10), (10, 10), (20, 25)]);
    let cfg = DmaConfig::new().max_transfer(16).max_segments(2);
    let got = run_full(&segs, cfg);
    let want: Vec<Shape> = vec![
        (0, 16, vec![(0, 0, 10), (1, 0, 6)]),
        (16, 16, vec![(1, 6, 4), (2, 0, 12)]),
        (32, 13, vec![(2, 12, 13)]),
    ];
    assert_eq!(got, want);
    // Without a byte limit, the 2-segment limit alone ends the first transfer.
    let got = run_full(&segs, DmaConfig::new().max_segments(2));
    assert_eq!(got[0].1, 20);
    assert_eq!(got[1], (20, 25, vec![(2, 0, 25)]));
}

#[test]
fn short_transfer_continues_mid_segment() {
    let segs = segs([(0, 10), (10, 10), (20, 10)]);
    let mut tx = read_tx(&segs, DmaConfig::new());
    let t = submitted(&mut tx)[0];
    assert_eq!(t.segment_count, 3);
    assert!(!tx.transfer_completed(t.id, OK, 13).unwrap());
    let r = submitted(&mut tx)[0];
    assert_ne!(r.id, t.id);
    assert_eq!((r.device_offset, r.len, r.segment_count), (13, 17, 2));
    assert_eq!(pieces(&r, &segs), [(1, 3, 7), (2, 0, 10)]);
    assert!(!tx.transfer_completed(r.id, OK, 7).unwrap());
    let r = submitted(&mut tx)[0];
    assert_eq!(pieces(&r, &segs), [(2, 0, 10)]);
    assert!(tx.transfer_completed(r.id, OK, 10).unwrap());
    assert_eq!(done(&mut tx).bytes, 30);
}

#[test]
fn error_ends_the_transaction_with_its_errno() {
    let segs = segs([(0, 10), (100, 10)]);
    let mut tx = read_tx(&segs, DmaConfig::new());
    let t = submitted(&mut tx)[0];
    assert!(tx.transfer_completed(t.id, errno(libc::EIO), 4).unwrap());
    let c = done(&mut tx);
    assert_eq!(c.status, Err(Error::from_errno(libc::EIO)));
    assert_eq!(c.bytes, 4);
}

/// An error without an errno (refused before the kernel) reaches the outcome as it came,
/// and still beats an earlier cancel.
#[test]
fn a_typed_error_reaches_the_outcome_unchanged() {
    let segs = segs([(0, 10), (100, 10)]);
    let cfg = DmaConfig::new().max_in_flight(2);
    let mut tx = read_tx(&segs, cfg);
    let ts = submitted(&mut tx);
    assert!(!tx.cancel());
    let stale = Error::new(ErrorKind::StaleTarget);
    assert!(!tx.transfer_completed(ts[0].id, Err(stale), 0).unwrap());
    assert!(tx.transfer_completed(ts[1].id, OK, 10).unwrap());
    let c = done(&mut tx);
    assert_eq!((c.status, c.bytes), (Err(stale), 10));
}

#[test]
fn error_overrides_an_earlier_stop_and_first_error_wins() {
    let segs = segs([(0, 10), (100, 10), (200, 10)]);
    let cfg = DmaConfig::new().max_in_flight(3);
    let mut tx = read_tx(&segs, cfg);
    let ts = submitted(&mut tx);
    assert_eq!(ts.len(), 3);
    assert!(!tx.cancel());
    assert_eq!(
        drain(&mut tx),
        ts.iter()
            .map(|t| DmaAction::Cancel(t.id))
            .collect::<Vec<_>>()
    );
    assert_eq!(tx.status(), Some(Status::Cancelled));
    assert!(!tx
        .transfer_completed(ts[0].id, errno(libc::EIO), 0)
        .unwrap());
    assert!(!tx
        .transfer_completed(ts[1].id, errno(libc::ENOSPC), 0)
        .unwrap());
    assert!(!tx.buffers_releasable(), "transfer 2 still in flight");
    assert!(tx.transfer_completed(ts[2].id, OK, 10).unwrap());
    let c = done(&mut tx);
    assert_eq!(c.status, Err(Error::from_errno(libc::EIO)));
    assert_eq!(
        c.bytes, 10,
        "bytes that moved count even though the request failed"
    );
}

#[test]
fn stop_drains_in_flight_transfers_first() {
    let segs = segs([(0, 100)]);
    let cfg = DmaConfig::new().max_transfer(10).max_in_flight(2);
    let mut tx = Transaction::new(&segs[..], Direction::Write, cfg).unwrap();
    let ts = submitted(&mut tx);
    assert!(!tx.transfer_completed(ts[0].id, OK, 10).unwrap());
    // Transfer 2 is queued (not polled) in slot 0: the cancel withdraws it.
    assert!(!tx.cancel());
    assert_eq!(drain(&mut tx), [DmaAction::Cancel(ts[1].id)]);
    assert!(!tx.cancel(), "second cancel ignored");
    assert!(!tx.buffers_releasable());
    // The cancelled transfer raced and moved 6 bytes.
    assert!(tx.transfer_completed(ts[1].id, CANCELLED, 6).unwrap());
    assert!(tx.buffers_releasable());
    let c = done(&mut tx);
    assert!(c.status.unwrap_err().is_cancelled());
    assert_eq!(c.bytes, 16);
    assert_eq!(tx.bytes_transferred(), 16);
    assert!(!tx.cancel(), "cancel after completion ignored");
}

#[test]
fn stop_before_anything_was_submitted_ends_at_once() {
    let segs = segs([(0, 100)]);
    let mut tx = read_tx(&segs, DmaConfig::new());
    assert!(tx.cancel());
    let a = drain(&mut tx);
    assert_eq!(
        a,
        [DmaAction::Complete(DmaOutcome {
            status: Err(Error::new(ErrorKind::Cancelled)),
            bytes: 0
        })]
    );
}

#[test]
fn timeout_cancels_and_completes_timed_out() {
    let segs = segs([(0, 100)]);
    let mut tx = read_tx(&segs, DmaConfig::new().timer(true));
    let t = submitted(&mut tx)[0];
    assert!(!tx.timeout().unwrap());
    assert_eq!(drain(&mut tx), [DmaAction::Cancel(t.id)]);
    assert_eq!(tx.timeout(), Err(NO_TIMER_ERR));
    assert!(tx.transfer_completed(t.id, CANCELLED, 0).unwrap());
    assert!(done(&mut tx).status.unwrap_err().is_timed_out());
}

const NO_TIMER_ERR: Error = Error::new(ErrorKind::NotInProgress { what: "dma timer" });

/// The final transfer comes back first: the timer is queued, so the transaction asks for
/// it to be stopped and waits. Its cancellation completes the transaction; a timer that
/// fires after all loses.
#[test]
fn final_transfer_first_then_the_timer_is_cancelled_or_loses() {
    for fires in [false, true] {
        let segs = segs([(0, 100)]);
        let mut tx = read_tx(&segs, DmaConfig::new().timer(true));
        let t = submitted(&mut tx)[0];
        assert!(tx.transfer_completed(t.id, OK, 100).unwrap());
        assert_eq!(drain(&mut tx), [DmaAction::CancelTimer]);
        assert!(tx.buffers_releasable() && !tx.is_complete());
        if fires {
            assert!(!tx.timeout().unwrap(), "the DMA part already ended");
        } else {
            tx.timer_cancelled().unwrap();
        }
        assert_eq!(done(&mut tx), ok(100), "fires: {fires}");
        assert_eq!(tx.timer_cancelled(), Err(NO_TIMER_ERR));
    }
}

#[test]
fn completed_final_ends_early() {
    let segs = segs([(0, 10), (100, 10)]);
    let mut tx = read_tx(&segs, DmaConfig::new());
    let t = submitted(&mut tx)[0];
    assert!(tx.completed_final(t.id, OK, 7).unwrap());
    assert_eq!(done(&mut tx), ok(7));
}

#[test]
fn read_eof_ends_ok_short_and_lets_earlier_transfers_drain() {
    let segs = segs([(0, 10), (10, 10), (20, 10)]);
    let cfg = DmaConfig::new().max_transfer(10).max_in_flight(3);
    let mut tx = read_tx(&segs, cfg);
    let ts = submitted(&mut tx);
    // The file ends at 14: the last transfer reads nothing, the middle one is short.
    assert!(!tx.transfer_completed(ts[2].id, OK, 0).unwrap());
    assert_eq!(drain(&mut tx), [], "nothing cancelled at end of file");
    // Short below the known end (20): the rest continues, and finds the real end.
    assert!(!tx.transfer_completed(ts[1].id, OK, 4).unwrap());
    let rest = submitted(&mut tx);
    assert_eq!((rest[0].device_offset, rest[0].len), (14, 6));
    assert!(!tx.transfer_completed(rest[0].id, OK, 0).unwrap());
    assert!(tx.transfer_completed(ts[0].id, OK, 10).unwrap());
    assert_eq!(done(&mut tx), ok(14));
}

#[test]
fn write_of_zero_bytes_fails() {
    let segs = segs([(0, 10)]);
    let mut tx = Transaction::new(&segs[..], Direction::Write, DmaConfig::new()).unwrap();
    let t = submitted(&mut tx)[0];
    assert!(tx.transfer_completed(t.id, OK, 0).unwrap());
    assert_eq!(done(&mut tx).status, Err(Error::from_errno(libc::EIO)));
}

#[test]
fn impossible_events_are_rejected_and_change_nothing() {
    let segs = segs([(0, 10), (50, 10)]);
    let mut tx = read_tx(&segs, DmaConfig::new());
    // Queued, not yet polled: cannot have completed.
    assert!(tx.transfer_completed(TransferId::new(0), OK, 10).is_err());
    let t = submitted(&mut tx)[0];
    assert!(tx.transfer_completed(TransferId::new(99), OK, 1).is_err());
    assert!(tx.transfer_completed(t.id, OK, 11).is_err());
    assert!(tx.timeout().is_err(), "no timer armed");
    assert!(tx.timer_cancelled().is_err());
    assert_eq!(tx.in_flight(), 1);
    assert!(!tx.transfer_completed(t.id, OK, 10).unwrap());
    assert!(tx.transfer_completed(t.id, OK, 10).is_err(), "twice");
    let eio = Err(Error::from_errno(libc::EIO));
    assert!(tx
        .handle(DmaEvent::from_result(TransferId::new(1), eio))
        .is_err());
}

#[test]
fn config_and_list_are_validated() {
    let segs = segs([(0, 10)]);
    for cfg in [
        DmaConfig::new().max_transfer(0),
        DmaConfig::new().max_transfer(MAX_TRANSFER + 1),
        DmaConfig::new().max_segments(0),
        DmaConfig::new().max_segments(MAX_SEGMENTS + 1),
        DmaConfig::new().max_in_flight(0),
        DmaConfig::new().max_in_flight(MAX_IN_FLIGHT + 1),
    ] {
        assert!(
            Transaction::new(&segs[..], Direction::Read, cfg).is_err(),
            "{cfg:?}"
        );
    }
    let empty: [Segment; 0] = [];
    assert!(Transaction::new(&empty[..], Direction::Read, DmaConfig::new()).is_err());
    let zeros = [Segment::new(0, 0); 3];
    assert!(Transaction::new(&zeros[..], Direction::Read, DmaConfig::new()).is_err());
    let overflow = [Segment::new(u64::MAX, 2)];
    assert!(Transaction::new(&overflow[..], Direction::Read, DmaConfig::new()).is_err());
    let big = [Segment::new(0, u64::MAX), Segment::new(0, 1)];
    assert!(Transaction::new(&big[..], Direction::Read, DmaConfig::new()).is_err());
    // Owned lists work too.
    assert!(Transaction::new(vec![Segment::new(0, 1)], Direction::Read, DmaConfig::new()).is_ok());
}

#[test]
fn cqe_results_map_to_statuses() {
    let id = TransferId::new(3);
    let ev = |status, bytes| DmaEvent::TransferCompleted { id, status, bytes };
    assert_eq!(DmaEvent::from_result(id, Ok(42)), ev(OK, 42));
    assert_eq!(
        DmaEvent::from_result(id, Err(Error::from_errno(libc::ECANCELED))),
        ev(CANCELLED, 0)
    );
    assert_eq!(
        DmaEvent::from_result(id, Err(Error::from_errno(libc::EIO))),
        ev(errno(libc::EIO), 0)
    );
    assert_eq!(
        DmaEvent::from_result(id, Err(Error::from_errno(i32::MIN))),
        ev(errno(i32::MIN), 0)
    );
}

/// Each segment's `segment_moved` is exactly the prefix of it that moved: up to its first
/// byte that did not (a byte that moved after a gap is not counted).
fn check_segment_prefixes<S: AsRef<[Segment]>>(tx: &Transaction<S>, moved: &[Vec<bool>]) {
    for (i, m) in moved.iter().enumerate() {
        let prefix = m.iter().position(|b| !b).unwrap_or(m.len()) as u64;
        assert_eq!(tx.segment_moved(i), prefix, "segment {i}: {m:?}");
    }
    assert_eq!(tx.segment_moved(moved.len()), 0, "past the list");
}

#[test]
fn a_segments_count_is_the_prefix_that_moved_whatever_the_order() {
    // One 30-byte segment cut into three 10-byte transfers, all in flight at once.
    let segs = segs([(0, 30)]);
    let cfg = DmaConfig::new().max_transfer(10).max_in_flight(3);
    let mut tx = read_tx(&segs, cfg);
    let ts = submitted(&mut tx);
    assert_eq!(ts.len(), 3);
    assert_eq!(tx.segment_moved(0), 0);
    // The second and third land first: not a prefix yet.
    assert!(!tx.transfer_completed(ts[1].id, OK, 10).unwrap());
    assert!(!tx.transfer_completed(ts[2].id, OK, 10).unwrap());
    assert_eq!(tx.segment_moved(0), 0);
    // The first is short: 4 bytes; its rest goes again.
    assert!(!tx.transfer_completed(ts[0].id, OK, 4).unwrap());
    assert_eq!(tx.segment_moved(0), 4);
    let rest = submitted(&mut tx);
    assert_eq!(pieces(&rest[0], &segs), [(0, 4, 6)]);
    // A cancel now: the rest is cancelled and never moves. The segment holds 4 bytes that
    // are a prefix, a gap, then 20 bytes that moved but are not counted.
    assert!(!tx.cancel());
    assert_eq!(drain(&mut tx), [DmaAction::Cancel(rest[0].id)]);
    assert!(tx.transfer_completed(rest[0].id, CANCELLED, 0).unwrap());
    assert_eq!(tx.segment_moved(0), 4);
    assert_eq!(tx.segment_moved(1), 0, "past the list");
    assert_eq!(tx.bytes_transferred(), 24);
    assert_eq!(done(&mut tx).bytes, 24);
}

/// A simulated device drives random transactions with short transfers, errors, cancels,
/// timeouts and timer races; every invariant is checked on the way.
fn simulate(seed: u64) {
    let mut rng = Rng::with_seed(seed | 1);
    let segs = random_list(&mut rng);
    let timer = rng.u64(..2) == 0;
    let (max_transfer, max_segments, max_in_flight) = (
        1 + rng.u64(..60),
        1 + rng.u64(..4) as u32,
        1 + rng.u64(..3) as usize,
    );
    let cfg = DmaConfig::new()
        .max_transfer(max_transfer)
        .max_segments(max_segments)
        .max_in_flight(max_in_flight as u32)
        .timer(timer);
    let direction = if rng.u64(..2) == 0 {
        Direction::Read
    } else {
        Direction::Write
    };
    let eof = if direction == Direction::Read && rng.u64(..3) == 0 {
        rng.u64(..1200)
    } else {
        u64::MAX
    };
    let Ok(mut tx) = Transaction::new(&segs[..], direction, cfg) else {
        assert!(segs.iter().all(|s| s.len == 0));
        return;
    };
    // The action queue never grows past what `new` reserved.
    let cap = tx.action_capacity();
    assert!(cap >= 2 * max_in_flight + 2);
    let mut moved: Vec<Vec<bool>> = segs.iter().map(|s| vec![false; s.len as usize]).collect();
    let mut flight: Vec<Transfer> = Vec::new();
    let mut cancelled: Vec<TransferId> = Vec::new();
    let mut timer_pending = timer;
    let mut cancel_timer_asked = false;
    let mut first_error: Option<Error> = None;
    let mut early: Option<Status> = None; // first effective cancel / timeout
    let mut saw_cancelled = false;
    let mut eof_seen = false;
    let mut final_declared = false;
    let mut trues = 0;
    let mut done: Option<DmaOutcome> = None;
    for _ in 0..100_000 {
        for a in drain(&mut tx) {
            match a {
                DmaAction::Submit(t) => {
                    assert!(!tx.buffers_releasable(), "submit after the final transfer");
                    assert!(t.len > 0 && t.len <= max_transfer);
                    assert!(t.segment_count as u32 <= max_segments);
                    assert_eq!(t.segment_count, t.pieces(&segs).count());
                    flight.push(t);
                }
                DmaAction::Cancel(id) => {
                    assert!(flight.iter().any(|t| t.id == id), "cancel of idle transfer");
                    cancelled.push(id);
                }
                DmaAction::CancelTimer => {
                    assert!(timer_pending && tx.buffers_releasable());
                    cancel_timer_asked = true;
                }
                DmaAction::Complete(c) => {
                    assert!(done.is_none(), "completed twice");
                    assert!(flight.is_empty() && tx.buffers_releasable());
                    assert!(!timer_pending, "completed with the timer still queued");
                    done = Some(c);
                }
            }
        }
        assert!(tx.in_flight() <= max_in_flight);
        assert_eq!(tx.action_capacity(), cap);
        check_segment_prefixes(&tx, &moved);
        if tx.buffers_releasable() && timer_pending {
            assert!(
                cancel_timer_asked,
                "the timer must be stopped once the DMA part ended"
            );
        }
        if done.is_some() {
            break;
        }
        let roll = rng.u64(..100);
        if !flight.is_empty() && roll < 90 {
            let t = flight.swap_remove(rng.u64(..flight.len() as u64) as usize);
            let was_cancelled = cancelled.contains(&t.id);
            let fate = rng.u64(..100);
            let (status, n) = if fate < 3 {
                (errno(libc::EIO + fate as i32), rng.u64(..t.len + 1))
            } else if (was_cancelled && fate < 50) || fate < 5 {
                // Our cancel took effect, or someone else cancelled it (ring teardown).
                (CANCELLED, 0)
            } else if direction == Direction::Write && fate < 7 {
                (OK, 0)
            } else {
                let avail = eof.saturating_sub(t.device_offset).min(t.len);
                let n = if fate < 35 && avail > 0 {
                    1 + rng.u64(..avail)
                } else {
                    avail
                };
                (OK, n)
            };
            // Mark the bytes moved, checking the device offsets the pieces map to.
            let mut left = n;
            let mut dev = t.device_offset;
            for p in t.pieces(&segs) {
                if left == 0 {
                    break;
                }
                let take = p.len.min(left);
                assert_eq!(segs[p.segment].device_offset + p.offset, dev, "contiguity");
                for b in p.offset..p.offset + take {
                    let byte = &mut moved[p.segment][b as usize];
                    assert!(!*byte, "byte moved twice");
                    *byte = true;
                }
                dev += take;
                left -= take;
            }
            match status {
                Err(e) if e.is_cancelled() => saw_cancelled = true,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
                Ok(()) if n == 0 && direction == Direction::Write => {
                    first_error.get_or_insert(Error::from_errno(libc::EIO));
                }
                Ok(()) if n == 0 => eof_seen = true,
                Ok(()) => {}
            }
            let last = rng.u64(..30) == 0;
            final_declared |= last;
            let ended = if last {
                tx.completed_final(t.id, status, n)
            } else {
                tx.transfer_completed(t.id, status, n)
            }
            .unwrap();
            if ended {
                trues += 1;
                assert!(tx.buffers_releasable() && tx.in_flight() == 0);
            }
        } else if roll < 94 || (flight.is_empty() && !timer_pending) {
            let before = tx.buffers_releasable();
            let ended = tx.cancel();
            if !before && early.is_none() {
                early = Some(Status::Cancelled);
            }
            trues += usize::from(ended);
        } else if timer_pending && (roll < 97 || !cancel_timer_asked) {
            let before = tx.buffers_releasable();
            timer_pending = false;
            let ended = tx.timeout().unwrap();
            if !before {
                early.get_or_insert(Status::TimedOut);
            }
            trues += usize::from(ended);
        } else if timer_pending && cancel_timer_asked {
            timer_pending = false;
            tx.timer_cancelled().unwrap();
        } else {
            assert!(tx.timeout().is_err() && tx.timer_cancelled().is_err());
        }
    }
    let c = done.expect("completed");
    assert_eq!(trues, 1, "seed {seed}: exactly one event ends the DMA part");
    let total: u64 = moved.iter().flatten().filter(|b| **b).count() as u64;
    assert_eq!(c.bytes, total, "seed {seed}");
    assert_eq!(tx.bytes_transferred(), total);
    let want = match (first_error, early) {
        (Some(e), _) => Err(e),
        (None, Some(s)) => s.into_result(),
        (None, None) if saw_cancelled => Status::Cancelled.into_result(),
        (None, None) => Ok(()),
    };
    assert_eq!(c.status, want, "seed {seed}");
    if c.status.is_ok() && !eof_seen && !final_declared {
        assert_eq!(c.bytes, tx.total_len(), "seed {seed}");
    }
}

#[test]
fn randomized_against_a_simulated_device() {
    let runs = if cfg!(miri) { 20 } else { 4_000 };
    for seed in 0..runs {
        simulate((seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) + 3);
    }
}

/// Fuzz-style: arbitrary events, including impossible ones, never panic; the request
/// completes at most once and at most one event ends the DMA part.
#[test]
fn arbitrary_event_sequences_never_panic() {
    let mut rng = Rng::with_seed(99);
    for _ in 0..2_000 {
        let segs = random_list(&mut rng);
        let cfg = DmaConfig::new()
            .max_transfer(1 + rng.u64(..30))
            .max_segments(1 + rng.u64(..3) as u32)
            .max_in_flight(1 + rng.u64(..3) as u32)
            .timer(rng.u64(..2) == 0);
        let Ok(mut tx) = Transaction::new(&segs[..], Direction::Read, cfg) else {
            continue;
        };
        let (mut completes, mut trues) = (0, 0);
        let cap = tx.action_capacity();
        for _ in 0..60 {
            let id = TransferId::new(rng.u64(..8) as u32);
            let status = match rng.u64(..3) {
                0 => OK,
                1 => CANCELLED,
                _ => errno(rng.u64(..200) as i32),
            };
            let bytes = rng.u64(..40);
            let ev = match rng.u64(..12) {
                0 => DmaEvent::Cancel,
                1 => DmaEvent::Timeout,
                2 => DmaEvent::TimerCancelled,
                3 => DmaEvent::CompletedFinal { id, status, bytes },
                _ => DmaEvent::TransferCompleted { id, status, bytes },
            };
            if let Ok(true) = tx.handle(ev) {
                trues += 1;
            }
            assert_eq!(tx.action_capacity(), cap, "the action queue grew");
            if rng.u64(..3) != 0 {
                while let Some(a) = tx.poll_action() {
                    completes += usize::from(matches!(a, DmaAction::Complete(_)));
                }
            }
        }
        assert!(completes <= 1 && trues <= 1);
    }
}
