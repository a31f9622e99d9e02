use super::*;

const ALL: [Status; 6] = [
    Status::Success,
    Status::Cancelled,
    Status::TimedOut,
    Status::Failed(libc::EIO),
    Status::Failed(-7),
    Status::Failed(i32::MIN),
];

#[test]
fn status_round_trips_through_the_word() {
    for s in ALL {
        assert_eq!(Status::decode(s.encode() | STARTED | 5), Some(s));
        assert_eq!(Status::decode(s.encode()), None, "not started: {s:?}");
        assert_eq!(s.encode() & REFS_MASK, 0);
    }
}

#[test]
fn status_maps_to_errors() {
    assert_eq!(Status::Success.into_result(), Ok(()));
    assert!(Status::Cancelled.into_result().unwrap_err().is_cancelled());
    assert!(Status::TimedOut.into_result().unwrap_err().is_timed_out());
    let e = Status::Failed(libc::EIO).into_result().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Os(libc::EIO));
    assert_eq!(Status::from_error(e), Status::Failed(libc::EIO));
    assert_eq!(
        Status::from_error(Error::new(ErrorKind::Cancelled)),
        Status::Cancelled
    );
    assert_eq!(
        Status::from_error(Error::invalid("x")),
        Status::Failed(libc::EIO)
    );
}

#[test]
fn first_setter_wins_and_last_release_completes_once() {
    let g = CompletionGate::with_refs(3).unwrap();
    assert!(!g.completion_started());
    assert!(g.begin_completion(Status::TimedOut));
    assert!(!g.begin_completion(Status::Success));
    assert_eq!(g.status(), Some(Status::TimedOut));
    assert_eq!(g.release(), Ok(None));
    assert_eq!(g.release(), Ok(None));
    assert_eq!(g.refs(), 1);
    assert_eq!(g.release(), Ok(Some(Status::TimedOut)));
    assert!(g.is_completed());
    // Frozen: nothing changes a completed gate.
    assert_eq!(g.release(), Err(NO_REFERENCE));
    assert!(!g.begin_completion(Status::Success));
    assert!(!g.force_status(Status::Success));
    assert_eq!(g.try_acquire(), Err(ALREADY_COMPLETED));
    assert_eq!(g.complete(Status::Success, true), Err(NO_REFERENCE));
    assert_eq!(g.status(), Some(Status::TimedOut));
}

#[test]
fn force_overrides() {
    let g = CompletionGate::with_refs(2).unwrap();
    assert!(g.begin_completion(Status::Cancelled));
    assert!(g.force_status(Status::Failed(libc::EIO)));
    assert_eq!(g.release(), Ok(None));
    assert_eq!(
        g.complete(Status::Success, false),
        Ok(Some(Status::Failed(libc::EIO)))
    );
}

#[test]
fn complete_sets_and_drops_in_one_step() {
    let g = CompletionGate::new();
    assert_eq!(
        g.complete(Status::Success, false),
        Ok(Some(Status::Success))
    );
    let g = CompletionGate::with_refs(2).unwrap();
    assert_eq!(g.complete(Status::Cancelled, false), Ok(None));
    assert_eq!(
        g.complete(Status::Success, false),
        Ok(Some(Status::Cancelled))
    );
    let g = CompletionGate::with_refs(2).unwrap();
    assert_eq!(g.complete(Status::Cancelled, false), Ok(None));
    assert_eq!(
        g.complete(Status::Failed(5), true),
        Ok(Some(Status::Failed(5)))
    );
}

#[test]
fn last_release_without_status_is_rejected_and_changes_nothing() {
    let g = CompletionGate::with_refs(2).unwrap();
    assert_eq!(g.release(), Ok(None));
    assert_eq!(g.release(), Err(NO_STATUS));
    assert_eq!(g.refs(), 1);
    assert!(g.begin_completion(Status::Success));
    assert_eq!(g.release(), Ok(Some(Status::Success)));
}

#[test]
fn acquire_counts_and_bounds() {
    let g = CompletionGate::new();
    g.try_acquire().unwrap();
    assert_eq!(g.refs(), 2);
    assert!(CompletionGate::with_refs(0).is_err());
    assert!(CompletionGate::with_refs(CompletionGate::MAX_REFS + 1).is_err());
    let full = CompletionGate::with_refs(CompletionGate::MAX_REFS).unwrap();
    assert_eq!(full.try_acquire(), Err(TOO_MANY_REFS));
    assert!(full.force_status(Status::Failed(-1)));
    assert_eq!(full.refs(), CompletionGate::MAX_REFS);
    assert_eq!(full.status(), Some(Status::Failed(-1)));
}

#[test]
fn debug_shows_refs_and_status() {
    let g = CompletionGate::with_refs(2).unwrap();
    g.begin_completion(Status::Cancelled);
    let s = format!("{g:?}");
    assert!(s.contains("refs: 2") && s.contains("Cancelled"), "{s}");
}

/// Real threads hammering one gate: exactly one completer per round, and it sees the
/// winner's status.
#[test]
fn threads_complete_exactly_once() {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    let rounds = if cfg!(miri) { 20 } else { 2_000 };
    for round in 0..rounds {
        let gate = Arc::new(CompletionGate::with_refs(3).unwrap());
        let completions = Arc::new(AtomicUsize::new(0));
        let winners = Arc::new(AtomicUsize::new(0));
        let statuses = [Status::Success, Status::Cancelled, Status::TimedOut];
        let handles: Vec<_> = statuses
            .into_iter()
            .map(|s| {
                let (gate, completions, winners) =
                    (gate.clone(), completions.clone(), winners.clone());
                std::thread::spawn(move || {
                    if gate.begin_completion(s) {
                        winners.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(fin) = gate.release().unwrap() {
                        assert_eq!(Some(fin), gate.status());
                        completions.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(completions.load(Ordering::Relaxed), 1, "round {round}");
        assert_eq!(winners.load(Ordering::Relaxed), 1, "round {round}");
    }
}
