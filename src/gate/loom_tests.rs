use super::*;
use crate::sync::{Arc, AtomicBool, AtomicUsize};
use loom::thread;

/// Run `f` under loom, with a preemption bound of 2 unless `LOOM_MAX_PREEMPTIONS` says
/// otherwise, so each model stays well under a minute.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

/// What the paths of one request share: the gate, the outcome seen by the completer,
/// and per-path records (Relaxed on purpose: the gate's orderings must make them
/// visible to the completer).
struct Request {
    gate: CompletionGate,
    /// The "cancelable" mark: whoever clears it (the cancel routine by running,
    /// the transfer path by unmarking) owns the cancel path's reference.
    cancelable: AtomicBool,
    /// The timer is queued: whoever clears it (the timer routine by running, a
    /// cancel-timer path by stopping it) owns the timer's reference.
    timer_queued: AtomicBool,
    /// Bytes the transfer path recorded before it dropped its reference.
    bytes: AtomicU64,
    /// How many times the request completed.
    completions: AtomicUsize,
    /// The status the completer completed with (encoded, 0 = none).
    completed_with: AtomicU64,
    /// The status whose `begin_completion` won (encoded, 0 = none).
    winner: AtomicU64,
}

const NONE: u64 = u64::MAX;

impl Request {
    /// A request with the execution reference, plus the cancel path's and the timer's
    /// if `cancelable` / `timer`.
    fn new(cancelable: bool, timer: bool) -> Arc<Request> {
        let refs = 1 + u32::from(cancelable) + u32::from(timer);
        Arc::new(Request {
            gate: CompletionGate::with_refs(refs).unwrap(),
            cancelable: AtomicBool::new(cancelable),
            timer_queued: AtomicBool::new(timer),
            bytes: AtomicU64::new(0),
            completions: AtomicUsize::new(0),
            completed_with: AtomicU64::new(NONE),
            winner: AtomicU64::new(NONE),
        })
    }

    fn begin(&self, s: Status) {
        if self.gate.begin_completion(s) {
            self.winner.store(s.encode(), Ordering::Relaxed);
        }
    }

    /// Drop a reference, complete if last.
    fn drop_ref(&self) {
        if let Some(status) = self.gate.release().unwrap() {
            self.finish(status);
        }
    }

    fn finish(&self, status: Status) {
        // The transfer path's record must be visible to whoever completes.
        if self.winner.load(Ordering::Relaxed) == Status::Success.encode() {
            assert_eq!(self.bytes.load(Ordering::Relaxed), 4096);
        }
        self.completions.fetch_add(1, Ordering::Relaxed);
        self.completed_with
            .store(status.encode(), Ordering::Relaxed);
    }

    /// The transfer-complete path (the callback for the final transfer).
    fn transfer_complete(&self, status: Status, force: bool) {
        self.bytes.store(4096, Ordering::Relaxed);
        if force {
            self.gate.force_status(status);
            self.winner.store(status.encode(), Ordering::Relaxed);
        } else {
            self.begin(status);
        }
        // Unmark cancelable: if the cancel routine has not run, it never will; drop its
        // reference for it.
        if self.cancelable.swap(false, Ordering::Relaxed) {
            self.drop_ref();
        }
        // Stop the timer: if it was queued but never ran, drop its reference for it
        // (the cancel-timer path).
        if self.timer_queued.swap(false, Ordering::Relaxed) {
            self.drop_ref();
        }
        self.drop_ref();
    }

    /// The cancel routine: runs only if the request is still cancelable.
    fn cancel(&self) {
        if self.cancelable.swap(false, Ordering::Relaxed) {
            self.begin(Status::Cancelled);
            self.drop_ref();
        }
    }

    /// The timer routine: runs only if nobody stopped the timer first.
    fn timer_fires(&self) {
        if self.timer_queued.swap(false, Ordering::Relaxed) {
            self.begin(Status::TimedOut);
            self.drop_ref();
        }
    }

    fn check(&self) {
        assert_eq!(self.completions.load(Ordering::Relaxed), 1);
        assert!(self.gate.is_completed());
        let with = self.completed_with.load(Ordering::Relaxed);
        assert_eq!(with, self.winner.load(Ordering::Relaxed));
        assert_eq!(Some(with), self.gate.status().map(Status::encode));
    }
}

/// The transfer path (succeeding) on this thread against the cancel routine (if `cancel`)
/// and the timer routine (if `timer`), each on a thread of its own: the request completes
/// once, with the status whose begin-completion won.
fn transfer_vs(cancel: bool, timer: bool) {
    model(move || {
        let r = Request::new(cancel, timer);
        let (c1, c2) = (r.clone(), r.clone());
        let cancel = cancel.then(|| thread::spawn(move || c1.cancel()));
        let timer = timer.then(|| thread::spawn(move || c2.timer_fires()));
        r.transfer_complete(Status::Success, false);
        for t in [cancel, timer].into_iter().flatten() {
            t.join().unwrap();
        }
        r.check();
    });
}

#[test]
fn gate_transfer_vs_cancel() {
    transfer_vs(true, false);
}

#[test]
fn gate_transfer_vs_timer_queued_never_run() {
    // Exec + timer references. Either the timer runs (TimedOut may win) or the transfer
    // path stops it while still queued and drops its reference from the cancel-timer
    // path; the request completes once either way.
    transfer_vs(false, true);
}

#[test]
fn gate_transfer_vs_cancel_vs_timer() {
    transfer_vs(true, true);
}

#[test]
fn gate_forced_error_beats_cancel() {
    model(|| {
        let r = Request::new(true, false);
        let c = r.clone();
        let t = thread::spawn(move || c.cancel());
        r.transfer_complete(Status::Failed(libc::EIO), true);
        t.join().unwrap();
        assert_eq!(r.gate.status(), Some(Status::Failed(libc::EIO)));
        assert_eq!(r.completions.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn gate_acquire_races_completion() {
    // A path tries to take a reference while the owner completes: it either gets one
    // (and then completes the request itself) or is told the request is gone.
    model(|| {
        let gate = Arc::new(CompletionGate::new());
        let completions = Arc::new(AtomicUsize::new(0));
        let (g, n) = (gate.clone(), completions.clone());
        let t = thread::spawn(move || {
            if g.try_acquire().is_ok() && g.complete(Status::Cancelled, false).unwrap().is_some() {
                n.fetch_add(1, Ordering::Relaxed);
            }
        });
        if gate.complete(Status::Success, false).unwrap().is_some() {
            completions.fetch_add(1, Ordering::Relaxed);
        }
        t.join().unwrap();
        assert_eq!(completions.load(Ordering::Relaxed), 1);
        assert!(gate.is_completed());
    });
}

/// The classic mistake this primitive replaces: begin-completion and the reference
/// count as separate fields, each updated check-then-act with a plain load and store.
struct BrokenGate {
    refs: AtomicU64,
    started: AtomicBool,
    status: AtomicU64,
    /// Paths whose begin-completion won (Relaxed: read after the joins).
    winners: AtomicUsize,
    /// How many times the request completed (Relaxed: read after the joins).
    completions: AtomicUsize,
}

impl BrokenGate {
    /// Two references; begin-completion already done if `started`.
    fn new(started: bool) -> Arc<BrokenGate> {
        Arc::new(BrokenGate {
            refs: AtomicU64::new(2),
            started: AtomicBool::new(started),
            status: AtomicU64::new(0),
            winners: AtomicUsize::new(0),
            completions: AtomicUsize::new(0),
        })
    }

    fn begin(&self, s: Status) {
        if !self.started.load(Ordering::SeqCst) {
            self.status.store(s.encode(), Ordering::SeqCst);
            self.started.store(true, Ordering::SeqCst);
            self.winners.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drop a reference; the last one completes the request (reading its status).
    fn release(&self) {
        let refs = self.refs.load(Ordering::SeqCst);
        self.refs.store(refs - 1, Ordering::SeqCst);
        if refs == 1 {
            let _completed_with = self.status.load(Ordering::SeqCst);
            self.completions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Two paths each run `path` on one [`BrokenGate`] (begin-completion already done if
/// `started`), one of them on another thread; `check` looks at the gate after both, in
/// every interleaving.
fn broken_race(started: bool, path: fn(&BrokenGate, Status), check: fn(&BrokenGate)) {
    model(move || {
        let gate = BrokenGate::new(started);
        let g = gate.clone();
        let t = thread::spawn(move || path(&g, Status::Cancelled));
        path(&gate, Status::Success);
        t.join().unwrap();
        check(&gate);
    });
}

/// Loom finds the interleaving where both paths see `started == false` and both win
/// begin-completion (each then believes its status is the request's).
#[test]
#[should_panic(expected = "two winners")]
fn gate_broken_check_then_act_fails_under_loom() {
    let path = |g: &BrokenGate, s| {
        g.begin(s);
        g.release();
    };
    broken_race(false, path, |g| {
        assert_eq!(g.winners.load(Ordering::Relaxed), 1, "two winners");
        assert_eq!(g.completions.load(Ordering::Relaxed), 1, "lost completion");
    });
}

/// The reference count alone, decremented with a load and a store: loom finds the
/// interleaving where both paths read `refs == 2`, both store 1, and nobody completes.
#[test]
#[should_panic(expected = "lost completion")]
fn gate_broken_refcount_fails_under_loom() {
    broken_race(
        true,
        |g, _| g.release(),
        |g| {
            assert_eq!(g.completions.load(Ordering::Relaxed), 1, "lost completion");
        },
    );
}
