//! The split machine (`SplitMachine`): arbitrary plans and requests (invalid ones must be
//! refused with an error), with or without a deadline, then arbitrary interleavings of
//! child completions (in full, short, 0 bytes, any error — `ECANCELED` and `ETIME`
//! included), parent cancels, the timer firing or coming back cancelled, impossible
//! events and polls; then driven to its end, and once more after a restart. The oracle
//! (`iocomplete::split::oracle`) checks throughout: the request completes exactly once,
//! never before every child and the timer are back, and no action follows; the status is
//! the first of a child's error, a cancel, a deadline (a child's error stands over a
//! later cancel or timeout); `bytes` is the contiguous prefix that moved; no byte is
//! submitted or moved twice; an impossible event is refused and changes nothing.
#![no_main]

use std::time::Duration;

use iocomplete::split::oracle::{Check, SplitOracle};
use iocomplete::split::{ChildId, Mode, SplitMachine, TransferPlan};
use iocomplete::Direction;
use iocomplete::Error;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    write: bool,
    serial: bool,
    max_in_flight: u8,
    max_chunk: u16,
    boundary: u16,
    /// Alignment `1 << (align % 4)`.
    align: u8,
    segments: Option<(u8, u8)>,
    offset: u16,
    len: u16,
    deadline: bool,
    events: Vec<Ev>,
    /// Run the events again on the same machine, for this request.
    restart: Option<(u16, u16)>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Fate {
    Full,
    /// Fewer bytes (mod the length).
    Short(u16),
    Zero,
    /// `1 + e % 133`: any errno, `ECANCELED` and `ETIME` / `ETIMEDOUT` among them.
    Error(u8),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Ev {
    Poll(u8),
    /// The in-flight submit number `which` (mod count) completes.
    Complete {
        which: u8,
        fate: Fate,
    },
    Cancel,
    TimerFired,
    TimerCancelled,
    /// A completion for a child not in flight (skipped if it is).
    Stray {
        child: u8,
        bytes: u16,
        error: bool,
    },
    /// A completion reporting more bytes than submitted.
    TooMany {
        which: u8,
        extra: u16,
    },
}

/// Requests are at most 8 KiB: the oracle's byte maps stay cheap.
const MAX_LEN: u64 = 8 * 1024;

fn check(r: Check) {
    if let Err(e) = r {
        panic!("{e}");
    }
}

fn play(o: &mut SplitOracle, events: &[Ev]) {
    for &ev in events.iter().take(512) {
        match ev {
            Ev::Poll(n) => check(o.poll(usize::from(n % 8) + 1)),
            Ev::Complete { which, fate } => {
                if o.in_flight().is_empty() {
                    continue;
                }
                let k = usize::from(which) % o.in_flight().len();
                let len = o.in_flight()[k].len;
                let result = match fate {
                    Fate::Full => Ok(len),
                    Fate::Short(n) => Ok(u64::from(n) % len),
                    Fate::Zero => Ok(0),
                    Fate::Error(e) => Err(Error::from_errno(1 + i32::from(e % 133))),
                };
                check(o.complete(k, result));
            }
            Ev::Cancel => check(o.cancel()),
            Ev::TimerFired => check(o.timer_fired()),
            Ev::TimerCancelled => check(o.timer_cancelled()),
            Ev::Stray {
                child,
                bytes,
                error,
            } => {
                let child = ChildId::new(u32::from(child));
                if o.in_flight().iter().any(|s| s.child == child) {
                    continue;
                }
                let result = if error {
                    Err(Error::from_errno(libc::EIO))
                } else {
                    Ok(u64::from(bytes))
                };
                check(o.stray(child, result));
            }
            Ev::TooMany { which, extra } => {
                if o.in_flight().is_empty() {
                    continue;
                }
                let k = usize::from(which) % o.in_flight().len();
                let len = o.in_flight()[k].len;
                check(o.complete(k, Ok(len + 1 + u64::from(extra))));
            }
        }
    }
    if let Err(e) = o.finish() {
        panic!("{e}");
    }
}

fuzz_target!(|i: Input| {
    let align = 1u32 << (i.align % 4);
    let mut b = TransferPlan::builder()
        .max_chunk(u64::from(i.max_chunk))
        .boundary(u64::from(i.boundary))
        .align(align);
    if let Some((seg, n)) = i.segments {
        b = b.segments(u64::from(seg), u32::from(n));
    }
    let Ok(plan) = b.build() else {
        return;
    };
    let mode = if i.serial {
        Mode::Serial
    } else {
        Mode::Parallel {
            max_in_flight: u32::from(i.max_in_flight % 9),
        }
    };
    let direction = if i.write {
        Direction::Write
    } else {
        Direction::Read
    };
    let (offset, len) = (u64::from(i.offset), u64::from(i.len) % (MAX_LEN + 1));
    let deadline = i.deadline.then_some(Duration::from_millis(5));
    let m = SplitMachine::new(plan, mode, direction, offset, len, deadline);
    let mut o = match m.and_then(SplitOracle::new) {
        Ok(o) => o,
        Err(_) => {
            assert!(
                mode == Mode::Parallel { max_in_flight: 0 } || plan.check(offset, len).is_err(),
                "valid request refused"
            );
            return;
        }
    };
    play(&mut o, &i.events);
    if let Some((offset, len)) = i.restart {
        let (offset, len) = (u64::from(offset), u64::from(len) % (MAX_LEN + 1));
        if plan.check(offset, len).is_ok() {
            check(o.restart(offset, len));
            play(&mut o, &i.events);
        }
    }
});
