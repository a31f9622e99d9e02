use super::*;

fn plan(max_chunk: u64) -> TransferPlan {
    TransferPlan::builder()
        .max_chunk(max_chunk)
        .build()
        .unwrap()
}

fn drain(m: &mut SplitMachine) -> Vec<SplitAction> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

fn submits(actions: &[SplitAction]) -> Vec<(u32, u64, u64, u64)> {
    actions
        .iter()
        .filter_map(|a| match *a {
            SplitAction::Submit {
                child,
                offset,
                len,
                pos,
            } => Some((child.0, offset, len, pos)),
            _ => None,
        })
        .collect()
}

fn completion(actions: &[SplitAction]) -> Option<SplitOutcome> {
    actions.iter().find_map(|a| match a {
        SplitAction::Complete(c) => Some(*c),
        _ => None,
    })
}

/// A read of `len` bytes at offset 0 in chunks of 10.
fn read(mode: Mode, len: u64, deadline: Option<Duration>) -> SplitMachine {
    SplitMachine::new(plan(10), mode, Direction::Read, 0, len, deadline).unwrap()
}

/// [`read`] by `n` children in parallel.
fn parallel(n: u32, len: u64, deadline: Option<Duration>) -> SplitMachine {
    read(Mode::Parallel { max_in_flight: n }, len, deadline)
}

/// Drain the actions: the completion they must hold.
fn done(m: &mut SplitMachine) -> SplitOutcome {
    completion(&drain(m)).unwrap()
}

/// Success with `bytes` moved, all of them a prefix.
const fn ok(bytes: u64) -> SplitOutcome {
    SplitOutcome {
        status: Ok(()),
        bytes,
        transferred: bytes,
    }
}

const SECOND: Option<Duration> = Some(Duration::from_secs(1));
const ECANCELED: Error = Error::new(ErrorKind::Cancelled);

const C0: ChildId = ChildId(0);
const C1: ChildId = ChildId(1);
const C2: ChildId = ChildId(2);

#[test]
fn serial_reuses_one_child_in_order() {
    let mut m =
        SplitMachine::new(plan(100), Mode::Serial, Direction::Read, 1000, 250, None).unwrap();
    let mut seen = Vec::new();
    loop {
        let a = drain(&mut m);
        if let Some(c) = completion(&a) {
            assert_eq!(c, ok(250));
            break;
        }
        let s = submits(&a);
        assert_eq!(s.len(), 1);
        seen.push(s[0]);
        m.child_completed(C0, Ok(s[0].2)).unwrap();
    }
    assert_eq!(
        seen,
        [(0, 1000, 100, 0), (0, 1100, 100, 100), (0, 1200, 50, 200)]
    );
    assert!(m.is_complete());
    assert_eq!(m.poll_action(), None);
}

#[test]
fn short_transfer_resubmits_the_rest_of_the_chunk() {
    let mut m = SplitMachine::new(plan(100), Mode::Serial, Direction::Write, 0, 150, None).unwrap();
    assert_eq!(submits(&drain(&mut m)), [(0, 0, 100, 0)]);
    m.child_completed(C0, Ok(30)).unwrap();
    assert_eq!(submits(&drain(&mut m)), [(0, 30, 70, 30)]);
    m.child_completed(C0, Ok(70)).unwrap();
    assert_eq!(submits(&drain(&mut m)), [(0, 100, 50, 100)]);
    m.child_completed(C0, Ok(50)).unwrap();
    assert_eq!(done(&mut m).bytes, 150);
}

#[test]
fn read_eof_completes_ok_with_bytes_so_far() {
    let mut m = SplitMachine::new(plan(100), Mode::Serial, Direction::Read, 0, 300, None).unwrap();
    drain(&mut m);
    m.child_completed(C0, Ok(100)).unwrap();
    drain(&mut m);
    m.child_completed(C0, Ok(40)).unwrap();
    assert_eq!(submits(&drain(&mut m)), [(0, 140, 60, 140)]);
    m.child_completed(C0, Ok(0)).unwrap();
    assert_eq!(done(&mut m), ok(140));
}

#[test]
fn write_of_zero_bytes_fails_with_eio() {
    let mut m = SplitMachine::new(plan(100), Mode::Serial, Direction::Write, 0, 300, None).unwrap();
    drain(&mut m);
    m.child_completed(C0, Ok(0)).unwrap();
    let c = done(&mut m);
    assert_eq!(c.status, Err(Error::from_errno(libc::EIO)));
    assert_eq!(c.bytes, 0);
}

#[test]
fn parallel_keeps_max_in_flight_and_refills() {
    let mut m = parallel(3, 55, None);
    let a = submits(&drain(&mut m));
    assert_eq!(a, [(0, 0, 10, 0), (1, 10, 10, 10), (2, 20, 10, 20)]);
    assert_eq!(m.in_flight(), 3);
    m.child_completed(C1, Ok(10)).unwrap();
    assert_eq!(submits(&drain(&mut m)), [(1, 30, 10, 30)]);
    m.child_completed(C0, Ok(10)).unwrap();
    m.child_completed(C2, Ok(10)).unwrap();
    assert_eq!(submits(&drain(&mut m)), [(0, 40, 10, 40), (2, 50, 5, 50)]);
    for c in [C1, C0, C2] {
        let len = if c == C2 { 5 } else { 10 };
        m.child_completed(c, Ok(len)).unwrap();
    }
    assert_eq!(done(&mut m), ok(55));
}

#[test]
fn first_error_wins_cancels_the_rest_and_waits_for_them() {
    let mut m = parallel(3, 100, None);
    drain(&mut m);
    m.child_completed(C0, Ok(10)).unwrap(); // child 0 re-armed at 30, queued
    m.child_completed(C1, Err(Error::from_errno(libc::EIO)))
        .unwrap();
    // Child 0's queued submit was withdrawn; child 2 (in flight) is cancelled.
    let a = drain(&mut m);
    assert_eq!(a, [SplitAction::Cancel { child: C2 }]);
    assert!(!m.is_complete());
    // A later, different error does not replace the first.
    m.child_completed(C2, Err(Error::from_errno(libc::ENOSPC)))
        .unwrap();
    let c = done(&mut m);
    assert_eq!(c.status, Err(Error::from_errno(libc::EIO)));
    assert_eq!((c.bytes, c.transferred), (10, 10));
}

#[test]
fn cancelled_children_that_finished_anyway_count() {
    let mut m = parallel(2, 40, None);
    drain(&mut m);
    m.handle(SplitEvent::Cancel).unwrap();
    assert_eq!(
        drain(&mut m),
        [
            SplitAction::Cancel { child: C0 },
            SplitAction::Cancel { child: C1 }
        ]
    );
    m.child_completed(C0, Ok(10)).unwrap(); // raced the cancel and won
    m.child_completed(C1, Err(Error::from_errno(libc::ECANCELED)))
        .unwrap();
    let c = done(&mut m);
    assert!(c.status.unwrap_err().is_cancelled());
    assert_eq!((c.bytes, c.transferred), (10, 10));
    // A late cancel is ignored.
    m.handle(SplitEvent::Cancel).unwrap();
    assert_eq!(m.poll_action(), None);
}

#[test]
fn timeout_completes_timed_out() {
    let mut m = read(Mode::Serial, 40, SECOND);
    drain(&mut m);
    m.handle(SplitEvent::Timeout).unwrap();
    assert_eq!(drain(&mut m), [SplitAction::Cancel { child: C0 }]);
    m.child_completed(C0, Err(ECANCELED)).unwrap();
    assert!(done(&mut m).status.unwrap_err().is_timed_out());
}

#[test]
fn the_timer_is_armed_first_and_awaited_after_the_last_child() {
    let mut m = read(Mode::Serial, 10, SECOND);
    let a = drain(&mut m);
    assert_eq!(a[0], SplitAction::ArmTimer(Duration::from_secs(1)));
    assert_eq!(submits(&a), [(0, 0, 10, 0)]);
    m.child_completed(C0, Ok(10)).unwrap();
    // Every child is back: the outcome is final, the timer is asked to stop.
    assert_eq!(drain(&mut m), [SplitAction::CancelTimer]);
    assert!(!m.is_complete());
    assert_eq!(m.outcome().map(|c| c.status), Some(Ok(())));
    assert!(!m.cancel(), "not cancelable once every child is back");
    // It fired after all: it lost the race.
    m.handle(SplitEvent::Timeout).unwrap();
    let c = done(&mut m);
    assert_eq!((c.status, c.bytes), (Ok(()), 10));
    assert_eq!(m.poll_action(), None);
    // The next request arms it again; its cancellation completes it.
    m.restart(0, 10).unwrap();
    let a = drain(&mut m);
    assert_eq!(a[0], SplitAction::ArmTimer(Duration::from_secs(1)));
    m.child_completed(C0, Ok(10)).unwrap();
    assert_eq!(drain(&mut m), [SplitAction::CancelTimer]);
    m.handle(SplitEvent::TimerCancelled).unwrap();
    assert_eq!(done(&mut m).status, Ok(()));
}

#[test]
fn a_timer_reported_before_its_cancel_was_polled_withdraws_it() {
    let mut m = read(Mode::Serial, 10, SECOND);
    drain(&mut m);
    m.child_completed(C0, Ok(10)).unwrap();
    // CancelTimer is queued; the timer's completion comes back first.
    m.handle(SplitEvent::Timeout).unwrap();
    let a = drain(&mut m);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(completion(&a).unwrap().status, Ok(()));
}

#[test]
fn a_child_error_stands_over_a_later_deadline_and_cancel() {
    let mut m = parallel(2, 40, SECOND);
    drain(&mut m);
    m.child_completed(C0, Err(Error::from_errno(libc::EIO)))
        .unwrap();
    assert_eq!(drain(&mut m), [SplitAction::Cancel { child: C1 }]);
    m.handle(SplitEvent::Timeout).unwrap();
    assert!(m.cancel(), "still cancelable: a child is out");
    assert_eq!(drain(&mut m), [], "C1 already cancelled, the timer fired");
    m.child_completed(C1, Err(ECANCELED)).unwrap();
    assert_eq!(done(&mut m).status, Err(Error::from_errno(libc::EIO)));
}

#[test]
fn a_deadline_before_the_last_child_times_out_after_it() {
    let mut m = SplitMachine::new(plan(10), Mode::Serial, Direction::Write, 0, 40, SECOND).unwrap();
    drain(&mut m);
    m.handle(SplitEvent::Timeout).unwrap();
    assert_eq!(drain(&mut m), [SplitAction::Cancel { child: C0 }]);
    assert!(!m.is_complete(), "its child is still out");
    // A later cancel changes nothing.
    assert!(m.cancel());
    m.child_completed(C0, Ok(4)).unwrap();
    let a = drain(&mut m);
    assert_eq!(a.len(), 1, "no CancelTimer: it fired; {a:?}");
    let c = completion(&a).unwrap();
    assert!(c.status.unwrap_err().is_timed_out());
    assert_eq!((c.bytes, c.transferred), (4, 4));
}

#[test]
fn a_cancel_before_the_timer_was_armed_withdraws_it() {
    let mut m = read(Mode::Serial, 40, SECOND);
    assert!(m.cancel());
    let a = drain(&mut m);
    assert_eq!(a.len(), 1, "no ArmTimer, no submit: {a:?}");
    assert!(completion(&a).unwrap().status.unwrap_err().is_cancelled());
    // A zero-length request arms nothing.
    let mut m = read(Mode::Serial, 0, SECOND);
    assert_eq!(done(&mut m).status, Ok(()));
}

#[test]
fn a_cancel_queued_for_a_child_that_came_back_is_withdrawn() {
    let mut m = parallel(2, 40, None);
    drain(&mut m);
    assert!(m.cancel());
    // Both cancels are queued; C0 comes back before the driver polled them.
    m.child_completed(C0, Ok(10)).unwrap();
    assert_eq!(drain(&mut m), [SplitAction::Cancel { child: C1 }]);
}

#[test]
fn timer_events_without_a_timer_out_are_rejected() {
    let mut m = read(Mode::Serial, 10, None);
    drain(&mut m);
    assert_eq!(m.handle(SplitEvent::Timeout), Err(NO_TIMER), "no deadline");
    let mut m = read(Mode::Serial, 10, SECOND);
    assert_eq!(
        m.handle(SplitEvent::Timeout),
        Err(NO_TIMER),
        "not armed yet"
    );
    assert_eq!(m.handle(SplitEvent::TimerCancelled), Err(NO_TIMER));
    drain(&mut m);
    m.handle(SplitEvent::TimerCancelled).unwrap(); // refused by the ring
    assert_eq!(m.handle(SplitEvent::Timeout), Err(NO_TIMER), "already back");
    m.child_completed(C0, Ok(10)).unwrap();
    assert_eq!(done(&mut m).status, Ok(()));
}

#[test]
fn cancel_before_any_submit_was_polled_completes_at_once() {
    let mut m = parallel(4, 40, None);
    m.cancel();
    let a = drain(&mut m);
    assert_eq!(a.len(), 1, "{a:?}");
    let c = completion(&a).unwrap();
    assert!(c.status.unwrap_err().is_cancelled());
    assert_eq!(c.bytes, 0);
}

#[test]
fn unexpected_ecanceled_is_an_error_like_any_other() {
    let mut m = parallel(2, 40, None);
    drain(&mut m);
    m.child_completed(C1, Err(ECANCELED)).unwrap();
    assert_eq!(drain(&mut m), [SplitAction::Cancel { child: C0 }]);
    m.child_completed(C0, Ok(10)).unwrap();
    let c = done(&mut m);
    assert!(c.status.unwrap_err().is_cancelled());
    assert_eq!(c.bytes, 10);
}

#[test]
fn impossible_events_are_rejected_and_change_nothing() {
    let mut m = parallel(2, 40, None);
    // Submits queued but not polled: the driver cannot have a completion yet.
    assert_eq!(m.child_completed(C0, Ok(10)), Err(NOT_IN_FLIGHT));
    drain(&mut m);
    assert_eq!(m.child_completed(C2, Ok(1)), Err(NOT_IN_FLIGHT));
    assert_eq!(
        m.child_completed(ChildId(u32::MAX), Ok(1)),
        Err(NOT_IN_FLIGHT)
    );
    assert_eq!(m.child_completed(C0, Ok(11)), Err(TOO_MANY_BYTES));
    assert_eq!(m.in_flight(), 2);
    m.child_completed(C0, Ok(10)).unwrap();
    assert_eq!(m.child_completed(C0, Ok(10)), Err(NOT_IN_FLIGHT), "twice");
}

#[test]
fn construction_validates() {
    let p = TransferPlan::builder().align(512).build().unwrap();
    let e = SplitMachine::new(p, Mode::Serial, Direction::Read, 1, 512, None).unwrap_err();
    assert!(matches!(
        e.kind(),
        ErrorKind::Misaligned { what: "offset", .. }
    ));
    for n in [0, MAX_IN_FLIGHT + 1] {
        let mode = Mode::Parallel { max_in_flight: n };
        assert!(SplitMachine::new(p, mode, Direction::Read, 0, 512, None).is_err());
    }
    let mut m = SplitMachine::new(p, Mode::Serial, Direction::Read, 0, 0, None).unwrap();
    assert_eq!(done(&mut m), ok(0));
}

#[test]
fn restart_reuses_the_machine() {
    let mut m = read(Mode::Serial, 10, None);
    assert!(m.restart(0, 10).is_err(), "still running");
    drain(&mut m);
    m.child_completed(C0, Ok(10)).unwrap();
    assert!(m.restart(0, 10).is_err(), "completion not polled");
    drain(&mut m);
    m.restart(100, 20).unwrap();
    assert_eq!(m.request(), (100, 20));
    assert_eq!(submits(&drain(&mut m)), [(0, 100, 10, 0)]);
}

/// The reference model for the randomized test: the parent's expected completion from
/// a per-byte view of what happened.
mod model {
    use super::*;
    use crate::split::oracle::SplitOracle;

    /// Runs the machine against a simulated device: `eof` ends the file; each child
    /// submission moves `min(len, budget)` bytes where the budget comes from the PRNG;
    /// errors, cancels and deadlines are injected at random. The oracle checks the
    /// machine at every step (including that the status is the first error, cancel or
    /// deadline); this checks the bytes against end of file.
    pub(super) fn run(seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed | 1);
        let slots = 1 + rng.u64(..5) as u32;
        let mode = if rng.u64(..2) == 0 && slots == 1 {
            Mode::Serial
        } else {
            Mode::Parallel {
                max_in_flight: slots,
            }
        };
        let direction = if rng.u64(..2) == 0 {
            Direction::Read
        } else {
            Direction::Write
        };
        let p = TransferPlan::builder()
            .max_chunk(1 + rng.u64(..64))
            .boundary(if rng.u64(..2) == 0 {
                0
            } else {
                1 + rng.u64(..100)
            })
            .build()
            .unwrap();
        let start = rng.u64(..1000);
        let len = rng.u64(..600);
        let eof = start + rng.u64(..len + len / 2 + 1);
        // A deadline on half the runs (drawn after the rest: the other draws stay).
        let deadline = (rng.u64(..2) == 0).then_some(Duration::from_millis(1));
        // The oracle checks every action and event: completion once, after the last
        // child and the timer; status, bytes and transferred; nothing moved twice.
        let m = SplitMachine::new(p, mode, direction, start, len, deadline).unwrap();
        let mut o = SplitOracle::new(m).unwrap();
        let check = |r: crate::split::oracle::Check| {
            r.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        };
        // The action queue never grows past what `new` reserved (the oracle checks it
        // after every event).
        assert!(o.machine().action_capacity() > 2 * slots as usize);
        // Byte map of what the device moved, relative to `start`.
        let mut moved = vec![false; len as usize];
        for _step in 0..100_000 {
            check(o.poll(usize::MAX));
            if o.in_flight().is_empty() {
                break;
            }
            // Pick a random in-flight child and a random fate.
            let k = rng.u64(..o.in_flight().len() as u64) as usize;
            let s = o.in_flight()[k];
            let (off, l) = (s.offset, s.len);
            let roll = rng.u64(..100);
            let result = if roll < 3 {
                Err(Error::from_errno(libc::EIO))
            } else if s.cancelled && roll < 60 {
                Err(Error::from_errno(libc::ECANCELED))
            } else {
                let avail = if direction == Direction::Read {
                    eof.saturating_sub(off).min(l)
                } else {
                    l
                };
                // A read returns 0 only at end of file; a write may stall (rarely).
                let n = if direction == Direction::Write && roll < 5 {
                    0
                } else if roll < 30 && avail > 0 {
                    1 + rng.u64(..avail)
                } else {
                    avail
                };
                for b in off..off + n {
                    moved[(b - start) as usize] = true;
                }
                Ok(n)
            };
            check(o.complete(k, result));
            if rng.u64(..200) == 0 {
                if rng.u64(..2) == 0 || !o.timer_out() {
                    check(o.cancel());
                } else {
                    check(o.timer_fired());
                }
            }
        }
        // Sometimes the deadline fires after the children are back: it loses the race.
        if o.timer_out() && rng.u64(..2) == 0 {
            check(o.timer_fired());
        }
        let c = o.finish().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(o.machine().is_complete());
        let total = moved.iter().filter(|b| **b).count() as u64;
        let prefix = moved.iter().take_while(|b| **b).count() as u64;
        assert_eq!(c.transferred, total, "seed {seed}");
        // The reported prefix was all moved; on success it is everything (or up to EOF).
        assert!(c.bytes <= prefix, "seed {seed}: {c:?} prefix {prefix}");
        if c.status.is_ok() {
            let want = if direction == Direction::Read {
                (eof.max(start) - start).min(len)
            } else {
                len
            };
            // Short transfers are continued, so success means every byte (up to end
            // of file on a read).
            assert_eq!(c.bytes, want, "seed {seed}: {c:?}");
            assert!(prefix >= want, "seed {seed}");
        }
    }
}

#[test]
fn randomized_against_a_simulated_device() {
    let runs = if cfg!(miri) { 20 } else { 3_000 };
    for seed in 0..runs {
        model::run(seed * 0x9E37_79B9 + 1);
    }
}

/// Fuzz-style: arbitrary events, including impossible ones, never panic, and the
/// parent completes at most once.
#[test]
fn arbitrary_event_sequences_never_panic() {
    let mut rng = fastrand::Rng::with_seed(12345);
    for _ in 0..2_000 {
        let mode = Mode::Parallel {
            max_in_flight: 1 + rng.u64(..4) as u32,
        };
        let mut m = SplitMachine::new(
            plan(1 + rng.u64(..50)),
            mode,
            Direction::Read,
            0,
            rng.u64(..300),
            None,
        )
        .unwrap();
        let mut completes = 0;
        let cap = m.actions.capacity();
        for _ in 0..60 {
            let ev = match rng.u64(..10) {
                0 => SplitEvent::Cancel,
                1 => SplitEvent::Timeout,
                2 => SplitEvent::ChildCompleted {
                    child: ChildId(rng.u64(..6) as u32),
                    result: Err(Error::from_errno(1 + rng.u64(..199) as i32)),
                },
                3 => SplitEvent::TimerCancelled,
                _ => SplitEvent::ChildCompleted {
                    child: ChildId(rng.u64(..6) as u32),
                    result: Ok(rng.u64(..80)),
                },
            };
            let _ = m.handle(ev);
            assert_eq!(m.actions.capacity(), cap, "the action queue grew");
            if rng.u64(..3) != 0 {
                while let Some(a) = m.poll_action() {
                    completes += usize::from(matches!(a, SplitAction::Complete(_)));
                }
            }
        }
        assert!(completes <= 1);
    }
}
