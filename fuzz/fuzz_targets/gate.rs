//! `CompletionGate` against a plain model: arbitrary sequences of acquire,
//! begin_completion, force_status, release and complete. Checked after every step: the
//! returned values, refs, status, `is_completed`; the request completes exactly once,
//! never while a reference is held, with the status the rules give (first setter wins,
//! force overrides, frozen once complete); misuse is an error that changes nothing.
//! A second phase replays the same operations from several threads and checks that
//! exactly one release completes.
#![no_main]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use iocomplete::gate::{CompletionGate, Status};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone, Copy, Arbitrary)]
enum S {
    Success,
    Cancelled,
    TimedOut,
    Failed(i32),
}

impl S {
    fn status(self) -> Status {
        match self {
            S::Success => Status::Success,
            S::Cancelled => Status::Cancelled,
            S::TimedOut => Status::TimedOut,
            S::Failed(e) => Status::Failed(e),
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Op {
    Acquire,
    Begin(S),
    Force(S),
    Release,
    Complete(S, bool),
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Initial references: small, near the maximum, or raw (0 and too many are refused).
    refs: u32,
    refs_mode: u8,
    ops: Vec<Op>,
    threads: Vec<Vec<Op>>,
}

#[derive(Debug)]
struct Model {
    refs: u32,
    status: Option<Status>,
    completions: u32,
}

impl Model {
    fn set(&mut self, s: Status, force: bool) -> bool {
        if self.refs == 0 || (!force && self.status.is_some()) {
            return false;
        }
        self.status = Some(s);
        true
    }

    fn release(&mut self) -> Result<Option<Status>, ()> {
        match self.refs {
            0 => Err(()),
            1 if self.status.is_none() => Err(()),
            1 => {
                self.refs = 0;
                self.completions += 1;
                Ok(self.status)
            }
            _ => {
                self.refs -= 1;
                Ok(None)
            }
        }
    }
}

fn check(gate: &CompletionGate, m: &Model) {
    assert_eq!(gate.refs(), m.refs, "refs");
    assert_eq!(gate.status(), m.status, "status");
    assert_eq!(gate.completion_started(), m.status.is_some());
    assert_eq!(gate.is_completed(), m.refs == 0);
    assert!(m.completions <= 1, "completed twice");
    assert_eq!(m.completions == 1, m.refs == 0);
}

fuzz_target!(|i: Input| {
    let refs = match i.refs_mode % 4 {
        0 | 1 => 1 + i.refs % 4,
        2 => CompletionGate::MAX_REFS - i.refs % 3,
        _ => i.refs,
    };
    let gate = match CompletionGate::with_refs(refs) {
        Ok(g) => g,
        Err(_) => {
            assert!(refs == 0 || refs > CompletionGate::MAX_REFS);
            return;
        }
    };
    let mut m = Model {
        refs,
        status: None,
        completions: 0,
    };
    check(&gate, &m);
    for op in i.ops.iter().take(256) {
        match *op {
            Op::Acquire => {
                let r = gate.try_acquire();
                if m.refs == 0 || m.refs == CompletionGate::MAX_REFS {
                    assert!(r.is_err(), "acquire should fail: {m:?}");
                } else {
                    assert!(r.is_ok(), "acquire failed: {r:?} {m:?}");
                    m.refs += 1;
                }
            }
            Op::Begin(s) => assert_eq!(gate.begin_completion(s.status()), m.set(s.status(), false)),
            Op::Force(s) => assert_eq!(gate.force_status(s.status()), m.set(s.status(), true)),
            Op::Release => match (gate.release(), m.release()) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "release"),
                (Err(_), Err(())) => {}
                (g, w) => panic!("release: gate {g:?}, model {w:?}"),
            },
            Op::Complete(s, force) => {
                let want = if m.refs == 0 {
                    Err(())
                } else {
                    m.set(s.status(), force);
                    m.release()
                };
                match (gate.complete(s.status(), force), want) {
                    (Ok(g), Ok(w)) => assert_eq!(g, w, "complete"),
                    (Err(_), Err(())) => {}
                    (g, w) => panic!("complete: gate {g:?}, model {w:?}"),
                }
            }
        }
        check(&gate, &m);
    }
    // A live request can always be completed: set a status if none, drop every reference.
    if m.refs > 0 && m.refs <= 64 {
        if m.status.is_none() {
            assert!(gate.begin_completion(Status::Success));
            m.status = Some(Status::Success);
        }
        while m.refs > 0 {
            assert_eq!(gate.release().ok(), m.release().ok());
        }
        check(&gate, &m);
        assert_eq!(m.completions, 1);
    }

    // Threads: each holds one reference and runs its ops (acquires paired with releases
    // of its own); exactly one release, over all threads, completes the request.
    if i.threads.is_empty() {
        return;
    }
    let n = i.threads.len().min(4);
    let gate = Arc::new(CompletionGate::with_refs(n as u32).unwrap());
    let completions = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..n)
        .map(|t| {
            let ops: Vec<Op> = i
                .threads
                .get(t)
                .map_or(Vec::new(), |v| v.iter().take(32).copied().collect());
            let (gate, completions) = (gate.clone(), completions.clone());
            std::thread::spawn(move || {
                let mut extra = 0u32;
                for op in ops {
                    match op {
                        Op::Acquire => {
                            // Holding a reference, the request cannot complete under us.
                            gate.try_acquire().unwrap();
                            extra += 1;
                        }
                        Op::Begin(s) => {
                            gate.begin_completion(s.status());
                        }
                        Op::Force(s) => {
                            assert!(gate.force_status(s.status()));
                        }
                        Op::Release | Op::Complete(..) if extra > 0 => {
                            // Never the last reference: this thread still holds its own.
                            let r = match op {
                                Op::Complete(s, f) => gate.complete(s.status(), f),
                                _ => gate.release(),
                            };
                            assert_eq!(r, Ok(None));
                            extra -= 1;
                        }
                        _ => {}
                    }
                }
                for _ in 0..extra {
                    assert_eq!(gate.release(), Ok(None));
                }
                if let Some(s) = gate.complete(Status::Success, false).unwrap() {
                    assert_eq!(gate.status(), Some(s));
                    completions.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        completions.load(Ordering::Relaxed),
        1,
        "exactly one completer"
    );
    assert!(gate.is_completed());
});
