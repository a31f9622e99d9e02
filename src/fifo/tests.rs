//! Tests of the FIFO receive machine: scripted scenarios, a naive blocking-loop model
//! driven by the same random source scripts, simulated runs, and garbage events.

use std::time::Duration;

use super::*;
use crate::error::{Error, ErrorKind, Result};
use crate::sim::{run_fifo, seeds, Fault, FifoTxnSpec, SimParams};
use fastrand::Rng;

fn actions(m: &mut FifoMachine) -> Vec<FifoAction> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

fn expect_read(m: &mut FifoMachine) -> (FifoSeq, u32, u32) {
    match m.poll_action() {
        Some(FifoAction::Read { seq, at, len }) => (seq, at, len),
        other => panic!("expected Read, got {other:?}"),
    }
}

fn expect_poll(m: &mut FifoMachine) -> FifoSeq {
    match m.poll_action() {
        Some(FifoAction::ArmPoll { seq }) => seq,
        other => panic!("expected ArmPoll, got {other:?}"),
    }
}

fn read_done(m: &mut FifoMachine, seq: FifoSeq, result: Result<u32>) {
    m.handle(FifoEvent::ReadDone { seq, result }).unwrap();
}

fn poll_done(m: &mut FifoMachine, seq: FifoSeq, result: Result<u32>) {
    m.handle(FifoEvent::PollDone { seq, result }).unwrap();
}

/// Expect a `Read` and complete it with `result`; returns where it read: (at, len).
fn read(m: &mut FifoMachine, result: Result<u32>) -> (u32, u32) {
    let (seq, at, len) = expect_read(m);
    read_done(m, seq, result);
    (at, len)
}

/// Expect an `ArmPoll` and complete it with `result`.
fn poll(m: &mut FifoMachine, result: Result<u32>) {
    let seq = expect_poll(m);
    poll_done(m, seq, result);
}

fn expect_end(m: &mut FifoMachine, bytes: u32) -> FifoOutcome {
    let a = actions(m);
    match a[..] {
        [FifoAction::End { bytes: b, .. }, FifoAction::Complete(o)] if b == bytes => o,
        _ => panic!("expected End({bytes}) + Complete, got {a:?}"),
    }
}

fn start(m: &mut FifoMachine, len: u32) -> TxnId {
    let txn = m.receive(len, None).unwrap();
    assert_eq!(m.poll_action(), Some(FifoAction::Begin { txn, len }));
    txn
}

const DEADLINE: Duration = Duration::from_secs(1);

/// A machine with a receive with a deadline: `Begin`, then `ArmTimer`.
fn with_deadline(len: u32) -> (FifoMachine, TxnId) {
    let mut m = FifoMachine::new();
    let txn = m.receive(len, Some(DEADLINE)).unwrap();
    assert_eq!(m.poll_action(), Some(FifoAction::Begin { txn, len }));
    assert_eq!(
        m.poll_action(),
        Some(FifoAction::ArmTimer { after: DEADLINE })
    );
    (m, txn)
}

const POLLIN: u32 = libc::POLLIN as u32;
const POLLHUP: u32 = libc::POLLHUP as u32;

/// An operation's result: the typed error for `errno`.
fn errno(e: i32) -> Result<u32> {
    Err(Error::from_errno(e))
}

// ---- scenarios --------------------------------------------------------------------------

#[test]
fn eof_before_len_completes_with_bytes_and_eof_status() {
    let mut m = FifoMachine::new();
    start(&mut m, 10);
    read(&mut m, Ok(4));
    assert_eq!(read(&mut m, Ok(0)), (4, 6));
    let o = expect_end(&mut m, 4);
    assert_eq!(o.status, FifoStatus::Eof);
    assert_eq!(
        o.into_result().unwrap_err().kind(),
        ErrorKind::UnexpectedEof { got: 4 }
    );
}

#[test]
fn hangup_with_nothing_readable_completes_with_hangup() {
    let mut m = FifoMachine::new();
    start(&mut m, 10);
    read(&mut m, errno(libc::EAGAIN));
    // POLLIN|POLLHUP: data is still there, read it.
    poll(&mut m, Ok(POLLIN | POLLHUP));
    read(&mut m, Ok(3));
    read(&mut m, errno(libc::EAGAIN));
    poll(&mut m, Ok(POLLHUP));
    let o = expect_end(&mut m, 3);
    assert_eq!((o.status, o.readiness_waits), (FifoStatus::HangUp, 2));
    assert_eq!(m.readiness_waits(), 2);
}

#[test]
fn cancel_while_read_in_flight_counts_the_reads_bytes() {
    let (mut m, txn) = with_deadline(10);
    let (s, _, _) = expect_read(&mut m);
    m.handle(FifoEvent::Cancel { txn }).unwrap();
    assert_eq!(
        actions(&mut m),
        [FifoAction::Cancel { seq: s }, FifoAction::CancelTimer]
    );
    m.handle(FifoEvent::Deadline { txn }).unwrap(); // racing deadline: no second cancel
    assert!(actions(&mut m).is_empty());
    read_done(&mut m, s, Ok(6));
    let o = expect_end(&mut m, 6);
    assert_eq!((o.status, o.bytes), (FifoStatus::Cancelled, 6));
    assert!(
        m.handle(FifoEvent::Cancel { txn }).is_err(),
        "stale transaction"
    );
}

#[test]
fn deadline_while_polling_times_out_after_the_poll_returns() {
    let (mut m, txn) = with_deadline(10);
    read(&mut m, Ok(2));
    read(&mut m, errno(libc::EAGAIN));
    let p = expect_poll(&mut m);
    m.handle(FifoEvent::Deadline { txn }).unwrap();
    assert_eq!(actions(&mut m), [FifoAction::Cancel { seq: p }]);
    poll_done(&mut m, p, errno(libc::ECANCELED));
    let o = expect_end(&mut m, 2);
    assert_eq!(o.status, FifoStatus::TimedOut);
    assert!(o.into_result().unwrap_err().is_timed_out());
}

#[test]
fn a_transaction_that_ends_by_itself_cancels_its_timer_and_waits_for_it() {
    let (mut m, txn) = with_deadline(4);
    read(&mut m, Ok(4));
    assert_eq!(actions(&mut m), [FifoAction::CancelTimer]);
    assert!(m.has_op_in_flight(), "the timer is still in flight");
    assert!(m.handle(FifoEvent::Cancel { txn }).is_ok());
    assert!(actions(&mut m).is_empty(), "nothing left to cancel");
    // The timer fired before its cancel reached it: the transaction's own status wins.
    m.handle(FifoEvent::Deadline { txn }).unwrap();
    assert_eq!(expect_end(&mut m, 4).status, FifoStatus::Full);
    assert!(!m.has_op_in_flight());
}

#[test]
fn a_refused_timer_leaves_the_transaction_without_a_deadline() {
    let (mut m, txn) = with_deadline(4);
    let (s, _, _) = expect_read(&mut m);
    m.handle(FifoEvent::TimerCancelled { txn }).unwrap();
    assert!(actions(&mut m).is_empty());
    assert!(
        m.handle(FifoEvent::Deadline { txn }).is_err(),
        "no timer now"
    );
    m.handle(FifoEvent::ReadEmpty { seq: s }).unwrap();
    poll(&mut m, Ok(POLLIN));
    read(&mut m, Ok(4));
    let o = expect_end(&mut m, 4);
    assert_eq!((o.status, o.readiness_waits), (FifoStatus::Full, 1));
}

#[test]
fn cancel_with_a_deadline_cancels_the_operation_and_the_timer() {
    let (mut m, txn) = with_deadline(10);
    let (s, _, _) = expect_read(&mut m);
    m.handle(FifoEvent::ReadEmpty { seq: s }).unwrap();
    let p = expect_poll(&mut m);
    m.handle(FifoEvent::Cancel { txn }).unwrap();
    assert_eq!(
        actions(&mut m),
        [FifoAction::Cancel { seq: p }, FifoAction::CancelTimer]
    );
    poll_done(&mut m, p, errno(libc::ECANCELED));
    assert!(actions(&mut m).is_empty(), "the timer is not back yet");
    m.handle(FifoEvent::TimerCancelled { txn }).unwrap();
    let o = expect_end(&mut m, 0);
    assert_eq!(o.status, FifoStatus::Cancelled);
}

#[test]
fn cancelled_read_that_fills_the_buffer_is_full() {
    let mut m = FifoMachine::new();
    let txn = start(&mut m, 4);
    let (s, _, _) = expect_read(&mut m);
    m.handle(FifoEvent::Cancel { txn }).unwrap();
    actions(&mut m);
    read_done(&mut m, s, Ok(4));
    assert_eq!(expect_end(&mut m, 4).status, FifoStatus::Full);
}

#[test]
fn linked_timeout_etime_without_deadline_event_is_timed_out() {
    let mut m = FifoMachine::new();
    start(&mut m, 4);
    read(&mut m, errno(libc::ETIME));
    assert_eq!(expect_end(&mut m, 0).status, FifoStatus::TimedOut);
}

#[test]
fn drain_reads_until_eagain_without_polling() {
    let mut m = FifoMachine::new();
    let txn = m.drain(100, None).unwrap();
    assert_eq!(m.poll_action(), Some(FifoAction::Begin { txn, len: 100 }));
    read(&mut m, Ok(30));
    assert_eq!(read(&mut m, errno(libc::EAGAIN)), (30, 70));
    let o = expect_end(&mut m, 30);
    assert_eq!((o.status, o.readiness_waits), (FifoStatus::Drained, 0));
    assert_eq!(o.into_result(), Ok(30));
}

#[test]
fn one_transaction_at_a_time_and_bad_lengths_rejected() {
    let mut m = FifoMachine::new();
    assert!(m.receive(0, None).is_err());
    assert!(m.receive(u32::MAX, None).is_err());
    assert!(actions(&mut m).is_empty());
    let t1 = start(&mut m, 2);
    assert!(m.receive(2, None).is_err());
    assert!(m.drain(2, None).is_err());
    read(&mut m, Ok(2));
    expect_end(&mut m, 2);
    let t2 = start(&mut m, 2);
    assert_ne!(t1, t2);
}

#[test]
fn impossible_events_are_rejected_and_change_nothing() {
    let mut m = FifoMachine::new();
    assert!(m
        .handle(FifoEvent::ReadDone {
            seq: FifoSeq::new(0),
            result: Ok(1)
        })
        .is_err());
    let txn = start(&mut m, 5);
    let (s, _, _) = expect_read(&mut m);
    let stopped = ErrorKind::NotInProgress {
        what: "FIFO transaction to cancel or time out",
    };
    let no_timer = ErrorKind::NotInProgress { what: "FIFO timer" };
    let bad = [
        (
            FifoEvent::ReadDone {
                seq: FifoSeq::new(77),
                result: Ok(1),
            },
            ErrorKind::NotInProgress { what: "operation" },
        ),
        (
            FifoEvent::ReadDone {
                seq: s,
                result: Ok(6),
            },
            ErrorKind::ExcessBytes,
        ),
        (
            FifoEvent::PollDone {
                seq: s,
                result: Ok(POLLIN),
            },
            ErrorKind::EventMismatch,
        ),
        (
            FifoEvent::Cancel {
                txn: TxnId::new(txn.get() + 1),
            },
            stopped,
        ),
        (
            FifoEvent::Deadline {
                txn: TxnId::new(txn.get() + 1),
            },
            stopped,
        ),
        (
            FifoEvent::ReadEmpty {
                seq: FifoSeq::new(77),
            },
            ErrorKind::NotInProgress { what: "operation" },
        ),
        // No timer armed.
        (FifoEvent::Deadline { txn }, no_timer),
        (FifoEvent::TimerCancelled { txn }, no_timer),
    ];
    for (ev, want) in bad {
        let e = m.handle(ev).unwrap_err();
        assert_eq!(e.kind(), want, "{ev:?}");
        assert!(actions(&mut m).is_empty());
        assert!(m.has_op_in_flight());
    }
    read_done(&mut m, s, Ok(1));
    assert!(
        m.handle(FifoEvent::ReadDone {
            seq: s,
            result: Ok(1)
        })
        .is_err(),
        "duplicate"
    );
}

#[test]
fn garbage_event_streams_never_panic() {
    for seed in seeds(300) {
        let mut rng = Rng::with_seed(seed);
        let mut m = FifoMachine::new();
        let mut ids: Vec<FifoSeq> = Vec::new();
        let mut txns: Vec<TxnId> = Vec::new();
        for _ in 0..300 {
            if rng.u32(..100) < 10 {
                let len = rng.u64(..20) as u32;
                let deadline = (rng.u32(..100) < 50).then_some(Duration::from_millis(len.into()));
                let r = if rng.u32(..100) < 50 {
                    m.receive(len, deadline)
                } else {
                    m.drain(len, deadline)
                };
                if let Ok(t) = r {
                    txns.push(t);
                }
            }
            while let Some(a) = m.poll_action() {
                if let FifoAction::Read { seq, .. } | FifoAction::ArmPoll { seq } = a {
                    ids.push(seq);
                }
            }
            let seq = if ids.is_empty() || rng.u32(..100) < 10 {
                FifoSeq::new(rng.u64(..40))
            } else {
                ids[rng.u64(..ids.len() as u64) as usize]
            };
            let txn = txns.last().copied().unwrap_or(TxnId::new(0));
            let result = match rng.u64(..5) {
                0 => errno(rng.u64(..140) as i32),
                1 => Ok(u32::MAX),
                2 => Ok(rng.u64(..0x4000) as u32),
                _ => Ok(rng.u64(..12) as u32),
            };
            let ev = match rng.u64(..6) {
                0 => FifoEvent::ReadDone { seq, result },
                1 => FifoEvent::PollDone { seq, result },
                2 => FifoEvent::ReadEmpty { seq },
                3 => FifoEvent::Cancel { txn },
                4 => FifoEvent::Deadline { txn },
                _ => FifoEvent::TimerCancelled { txn },
            };
            let _ = m.handle(ev); // rejections are fine; panics are not
            assert_eq!(m.has_op_in_flight(), m.current().is_some());
        }
    }
}

// ---- naive model ------------------------------------------------------------------------

/// What the source answers, in order.
#[derive(Debug, Clone, Copy)]
enum ReadResp {
    Data(u32),
    Again,
    Eof,
    Err(i32),
}

#[derive(Debug, Clone, Copy)]
enum PollResp {
    Ready,
    HangUp,
}

#[derive(Debug)]
struct Script {
    reads: Vec<ReadResp>,
    polls: Vec<PollResp>,
    /// Cancel (or deadline) while operation number `.0` is in flight; `.2`: the cancel
    /// takes effect (the operation completes with `ECANCELED`).
    stop: Option<(usize, FifoStatus, bool)>,
}

impl Script {
    fn random(rng: &mut Rng) -> Script {
        let reads = (0..64)
            .map(|_| match rng.u64(..20) {
                0 => ReadResp::Eof,
                1 => ReadResp::Err(libc::EIO),
                2..=8 => ReadResp::Again,
                _ => ReadResp::Data(1 + rng.u64(..12) as u32),
            })
            .collect();
        let polls = (0..64)
            .map(|_| {
                if rng.u32(..100) < 8 {
                    PollResp::HangUp
                } else {
                    PollResp::Ready
                }
            })
            .collect();
        let stop = (rng.u32(..100) < 40).then(|| {
            let status = if rng.u32(..100) < 50 {
                FifoStatus::Cancelled
            } else {
                FifoStatus::TimedOut
            };
            (rng.u64(..10) as usize, status, rng.u32(..100) < 50)
        });
        Script { reads, polls, stop }
    }

    fn read(&self, i: usize) -> ReadResp {
        self.reads.get(i).copied().unwrap_or(ReadResp::Eof)
    }

    fn poll(&self, i: usize) -> PollResp {
        self.polls.get(i).copied().unwrap_or(PollResp::HangUp)
    }
}

/// The obvious blocking loop: read until full; on EAGAIN wait once and read again.
fn naive(len: u32, drain: bool, s: &Script) -> (FifoStatus, u32, u32) {
    let (mut bytes, mut waits, mut k, mut ri, mut pi) = (0u32, 0u32, 0usize, 0usize, 0usize);
    // Start the next operation: the stop due while it is in flight, if any.
    let mut next_op = || {
        k += 1;
        s.stop.filter(|st| st.0 == k - 1)
    };
    let status = loop {
        let stop = next_op();
        if let Some((_, status, true)) = stop {
            break status;
        }
        ri += 1;
        match s.read(ri - 1) {
            ReadResp::Data(n) => {
                bytes += n.min(len - bytes);
                if bytes == len {
                    break FifoStatus::Full;
                }
                if let Some((_, status, _)) = stop {
                    break status;
                }
            }
            ReadResp::Eof => break FifoStatus::Eof,
            ReadResp::Err(e) => break FifoStatus::Failed(Error::from_errno(e)),
            ReadResp::Again => {
                if let Some((_, status, _)) = stop {
                    break status;
                }
                if drain {
                    break FifoStatus::Drained;
                }
                waits += 1;
                let stop = next_op();
                if let Some((_, status, true)) = stop {
                    break status;
                }
                pi += 1;
                let p = s.poll(pi - 1);
                if let Some((_, status, _)) = stop {
                    break status;
                }
                if let PollResp::HangUp = p {
                    break FifoStatus::HangUp;
                }
            }
        }
    };
    (status, bytes, waits)
}

/// Drive the machine with the same script (with a deadline timer when the script stops
/// it: the timer fires for a deadline, and is cancelled otherwise).
fn machine(len: u32, drain: bool, s: &Script) -> FifoOutcome {
    let mut m = FifoMachine::new();
    let deadline = s.stop.map(|_| DEADLINE);
    let txn = if drain {
        m.drain(len, deadline)
    } else {
        m.receive(len, deadline)
    }
    .unwrap();
    assert_eq!(m.poll_action(), Some(FifoAction::Begin { txn, len }));
    if let Some(after) = deadline {
        assert_eq!(m.poll_action(), Some(FifoAction::ArmTimer { after }));
    }
    let (mut k, mut ri, mut pi) = (0usize, 0usize, 0usize);
    loop {
        let a = m.poll_action().expect("machine stalled with nothing to do");
        let (seq, is_read, room) = match a {
            FifoAction::Read { seq, len: room, .. } => (seq, true, room),
            FifoAction::ArmPoll { seq } => (seq, false, 0),
            FifoAction::CancelTimer => {
                m.handle(FifoEvent::TimerCancelled { txn }).unwrap();
                continue;
            }
            FifoAction::End { .. } => match m.poll_action() {
                Some(FifoAction::Complete(o)) => return o,
                other => panic!("End not followed by Complete: {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        };
        let mut cancelled = false;
        if let Some((at, status, takes)) = s.stop.filter(|st| st.0 == k) {
            let ev = match status {
                FifoStatus::Cancelled => FifoEvent::Cancel { txn },
                _ => FifoEvent::Deadline { txn },
            };
            m.handle(ev).unwrap();
            assert_eq!(m.poll_action(), Some(FifoAction::Cancel { seq }), "op {at}");
            cancelled = takes;
        }
        k += 1;
        let result = if cancelled {
            errno(libc::ECANCELED)
        } else if is_read {
            let r = s.read(ri);
            ri += 1;
            match r {
                ReadResp::Data(n) => Ok(n.min(room)),
                ReadResp::Again => errno(libc::EAGAIN),
                ReadResp::Eof => Ok(0),
                ReadResp::Err(e) => errno(e),
            }
        } else {
            let p = s.poll(pi);
            pi += 1;
            match p {
                PollResp::Ready => Ok(POLLIN),
                PollResp::HangUp => Ok(POLLHUP),
            }
        };
        if is_read {
            read_done(&mut m, seq, result);
        } else {
            poll_done(&mut m, seq, result);
        }
    }
}

#[test]
fn machine_agrees_with_the_naive_loop_on_random_arrival_patterns() {
    let mut seen = std::collections::HashSet::new();
    for seed in seeds(3000) {
        let mut rng = Rng::with_seed(seed);
        let s = Script::random(&mut rng);
        let len = 1 + rng.u64(..40) as u32;
        let drain = rng.u32(..100) < 20;
        let o = machine(len, drain, &s);
        let want = naive(len, drain, &s);
        assert_eq!(
            (o.status, o.bytes, o.readiness_waits),
            want,
            "seed {seed}: {s:?}"
        );
        seen.insert(std::mem::discriminant(&o.status));
    }
    assert_eq!(seen.len(), 7, "every status should occur");
}

// ---- simulated device -----------------------------------------------------------------------

#[test]
fn random_simulated_transactions_keep_every_byte_in_order() {
    let (mut polls, mut hangups) = (0, 0);
    for seed in seeds(300) {
        let mut rng = Rng::with_seed(seed);
        let params = SimParams {
            data_len: rng.u64(..3000),
            short_pct: rng.u64(..60) as u32,
            max_delay: rng.u64(..5) as u32,
            burst_max: 1 + rng.u64(..400) as u32,
            burst_pct: 5 + rng.u64(..50) as u32,
            faults: if rng.u32(..100) < 20 {
                vec![Fault {
                    at: rng.u64(..3000),
                    errno: libc::EIO,
                    times: 1,
                }]
            } else {
                Vec::new()
            },
            ..SimParams::default()
        };
        let txns: Vec<FifoTxnSpec> = (0..1 + rng.u64(..6))
            .map(|_| FifoTxnSpec {
                len: rng.u64(..800) as u32,
                drain: rng.u32(..100) < 15,
                cancel_after: (rng.u32(..100) < 15).then(|| rng.u64(..30) as u32),
                deadline_after: (rng.u32(..100) < 15).then(|| rng.u64(..30) as u32),
            })
            .collect();
        let r = match run_fifo(seed, &txns, &params) {
            Ok(r) => r,
            Err(e) => panic!("seed {seed}: {e}\n{txns:?}\n{params:?}"),
        };
        // No busy loop: every poll follows an EAGAIN, and every EAGAIN not ending a
        // transaction (drain, cancel) is followed by a poll.
        assert!(r.polls <= r.eagains);
        assert!(r.eagains <= r.polls + txns.len() as u64);
        polls += r.polls;
        hangups += r
            .outcomes
            .iter()
            .filter(|o| o.status == FifoStatus::HangUp)
            .count();
    }
    assert!(
        polls > 100 && hangups > 10,
        "polls {polls}, hang-ups {hangups}"
    );
}

// ---- the receiver's deadline on a real pipe -------------------------------------------------

/// A silent source with a deadline: the kernel timer wakes the ring (one wait of up to
/// 10 s returns at the deadline) and the transaction ends `TimedOut` with the bytes so far.
#[test]
fn a_deadline_on_a_silent_source_is_woken_by_the_kernel_timer() {
    use std::io::Write;
    use std::time::Instant;

    use crate::testing::{pipe, pool};
    use crate::{Driver, Ring};

    let (rx, tx) = pipe();
    let mut tx = std::fs::File::from(tx);
    let mut ring = Ring::new().unwrap();
    let pool = pool(1);
    let t = ring.register(rx).unwrap();
    let mut fifo = FifoReceiver::new(&ring, t).unwrap();
    tx.write_all(b"early").unwrap();
    let started = Instant::now();
    fifo.receive_with_deadline(
        &mut ring,
        pool.try_get().unwrap(),
        100,
        Duration::from_millis(50),
    )
    .unwrap();
    let done = loop {
        if let Some(done) = fifo.process(&mut ring).unwrap() {
            break done;
        }
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(10), "never woken: {waited:?}");
        ring.run_once(Some(Duration::from_secs(10))).unwrap();
    };
    let took = started.elapsed();
    assert_eq!(done.status(), FifoStatus::TimedOut, "after {took:?}");
    assert!(took >= Duration::from_millis(50), "{took:?}");
    assert!(
        took < Duration::from_secs(5),
        "not woken by the timer: {took:?}"
    );
    assert_eq!(done.buf.data(), b"early");
    assert_eq!(done.readiness_waits(), 1);
    drop((done, fifo, tx));
    ring.run_until_idle().unwrap();
    let s = ring.stats();
    assert_eq!(
        (s.submitted, ring.in_flight(), ring.pending()),
        (s.completed, 0, 0)
    );
    assert_eq!(pool.stats().free, 1);
}

#[test]
fn refused_debug_is_compact() {
    let pool = crate::BufferPool::builder()
        .slots(1)
        .slot_len(1 << 16)
        .build()
        .unwrap();
    let mut buf = pool.try_get().unwrap();
    buf.set_len(1 << 16).unwrap();
    let r = FifoRefused {
        error: Error::new(ErrorKind::NotReadable),
        buf,
    };
    let s = format!("{r:?}");
    assert!(
        s.starts_with("FifoRefused { error: NotReadable, buf: PoolBuf {"),
        "{s}"
    );
    assert!(s.contains("len: 65536") && s.len() < 120, "{s}");
}
