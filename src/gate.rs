//! Exactly-once completion of a request raced by several paths.
//!
//! A request that can finish through more than one path — its transfer completing, a
//! cancel, a deadline timer — must complete exactly once, with one status. Kernel driver
//! frameworks solve this with *begin-completion* (the first path to decide sets the status;
//! a device error may force an override) plus a *completion reference count*: each path
//! that may still touch the request holds a reference, and whoever drops the last one
//! completes the request. [`CompletionGate`] is that pattern as a small lock-free
//! primitive: one atomic word, no lock, no allocation.
//!
//! # Protocol
//!
//! 1. Create the gate with one reference per path that may run ([`CompletionGate::with_refs`]),
//!    or take more later with [`CompletionGate::try_acquire`] while the request is live.
//! 2. A path that decides the outcome calls [`CompletionGate::begin_completion`]: the first
//!    status set wins, later ones are ignored (the call returns `false`).
//!    [`CompletionGate::force_status`] overrides whatever was set (the seed's
//!    `overrideStatus`, used for a device error that must beat a cancel).
//! 3. Every path drops its reference with [`CompletionGate::release`] (or sets a status and
//!    drops in one step with [`CompletionGate::complete`]). A path that *prevents* another
//!    one from ever running — a transfer path that stops a queued timer, or that makes the
//!    request non-cancelable before the cancel routine ran — drops that path's reference on
//!    its behalf.
//! 4. Exactly one `release` returns `Ok(Some(status))`: that caller completes the request.
//!
//! ```
//! use iocomplete::gate::{CompletionGate, Status};
//! // Execution path and cancel path.
//! let gate = CompletionGate::with_refs(2).unwrap();
//! // The cancel routine runs first: it sets Cancelled and drops its reference.
//! assert!(gate.begin_completion(Status::Cancelled));
//! assert_eq!(gate.release(), Ok(None));
//! // The transfer finishes afterwards; its Success loses, it drops the last reference.
//! assert!(!gate.begin_completion(Status::Success));
//! assert_eq!(gate.release(), Ok(Some(Status::Cancelled)));
//! assert!(gate.is_completed());
//! ```
//!
//! Misuse is rejected, never a panic: dropping a reference the gate does not have, taking a
//! reference after completion, or dropping the last reference before any status was set
//! returns an [`Error`] and leaves the gate unchanged.

use std::fmt;

use crate::error::{Error, ErrorKind, Result};
use crate::sync::{AtomicU64, Ordering};

/// The status a request completes with, as recorded by a [`CompletionGate`].
///
/// It packs into the gate's atomic word (a tag and an errno), so setting it and dropping a
/// reference can be one atomic step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The request finished successfully.
    Success,
    /// The request was cancelled.
    Cancelled,
    /// The request's deadline expired.
    TimedOut,
    /// The request failed with this errno (a positive value such as `libc::EIO`).
    Failed(i32),
}

impl Status {
    /// `Ok(())` for [`Status::Success`], otherwise the matching crate [`Error`]
    /// ([`ErrorKind::Cancelled`], [`ErrorKind::TimedOut`], or [`Error::from_errno`]).
    pub const fn into_result(self) -> Result<()> {
        match self {
            Status::Success => Ok(()),
            Status::Cancelled => Err(Error::new(ErrorKind::Cancelled)),
            Status::TimedOut => Err(Error::new(ErrorKind::TimedOut)),
            Status::Failed(errno) => Err(Error::from_errno(errno)),
        }
    }

    /// The status that reports `error`: cancel and timeout map to their own variants,
    /// anything else to [`Status::Failed`] with the error's errno (`EIO` when it has none).
    pub const fn from_error(error: Error) -> Status {
        match error.kind() {
            ErrorKind::Cancelled => Status::Cancelled,
            ErrorKind::TimedOut => Status::TimedOut,
            _ => match error.raw_os_error() {
                Some(errno) => Status::Failed(errno),
                None => Status::Failed(libc::EIO),
            },
        }
    }

    /// True for [`Status::Success`].
    pub const fn is_success(self) -> bool {
        matches!(self, Status::Success)
    }

    /// The status bits of the gate word (tag and errno fields; see [`CompletionGate`]).
    const fn encode(self) -> u64 {
        let (tag, errno) = match self {
            Status::Success => (TAG_SUCCESS, 0),
            Status::Cancelled => (TAG_CANCELLED, 0),
            Status::TimedOut => (TAG_TIMED_OUT, 0),
            Status::Failed(errno) => (TAG_FAILED, errno as u32),
        };
        (tag << TAG_SHIFT) | ((errno as u64) << ERRNO_SHIFT)
    }

    /// Read the status back from a gate word; `None` unless [`STARTED`] is set.
    const fn decode(word: u64) -> Option<Status> {
        if word & STARTED == 0 {
            return None;
        }
        let errno = (word >> ERRNO_SHIFT) as u32 as i32;
        Some(match (word & TAG_MASK) >> TAG_SHIFT {
            TAG_SUCCESS => Status::Success,
            TAG_CANCELLED => Status::Cancelled,
            TAG_TIMED_OUT => Status::TimedOut,
            _ => Status::Failed(errno),
        })
    }
}

// Layout of the gate word (`CompletionGate::word`):
//
//   bits 0..=23   REFS     completion references still held (0 = the request completed)
//   bit  24       STARTED  begin-completion ran: the tag and errno fields hold the status
//   bits 25..=26  TAG      Success / Cancelled / TimedOut / Failed
//   bits 27..=31  (zero)
//   bits 32..=63  ERRNO    the errno of `Status::Failed`, as the bits of an i32
const REFS_MASK: u64 = (1 << 24) - 1;
const STARTED: u64 = 1 << 24;
const TAG_SHIFT: u32 = 25;
const TAG_MASK: u64 = 0b11 << TAG_SHIFT;
const ERRNO_SHIFT: u32 = 32;
const STATUS_MASK: u64 = STARTED | TAG_MASK | (u32::MAX as u64) << ERRNO_SHIFT;
const TAG_SUCCESS: u64 = 0;
const TAG_CANCELLED: u64 = 1;
const TAG_TIMED_OUT: u64 = 2;
const TAG_FAILED: u64 = 3;

// The fields must not overlap.
const _: () = assert!(REFS_MASK & STATUS_MASK == 0);

/// Error for a reference dropped that the gate does not hold.
const NO_REFERENCE: Error = Error::invalid("completion gate: no reference left to drop");
/// Error for a reference taken after the request completed.
const ALREADY_COMPLETED: Error = Error::new(ErrorKind::AlreadyCompleted);
/// Error for the last reference dropped before any path set a status.
const NO_STATUS: Error =
    Error::invalid("completion gate: last reference dropped before a status was set");
/// Error for more references than the word can count.
const TOO_MANY_REFS: Error = Error::out_of_range(
    "completion gate references",
    1,
    CompletionGate::MAX_REFS as u64,
);

/// Begin-completion plus a completion reference count, in one atomic word.
///
/// See the [module documentation](self) for the protocol. The gate is `Sync`: every path
/// may run on its own thread. It never blocks and never allocates.
///
/// Invariants (kept by every operation, each of which is a single compare-exchange):
///
/// - the reference count only reaches zero through [`release`](Self::release) or
///   [`complete`](Self::complete), exactly once, and only when a status is set — so the
///   request completes exactly once, with a status;
/// - once the count is zero the word never changes again (the final status is frozen);
/// - the first [`begin_completion`](Self::begin_completion) sets the status; only
///   [`force_status`](Self::force_status) changes it afterwards.
pub struct CompletionGate {
    /// The whole state, so that "set the status" and "drop the last reference" can never
    /// interleave badly: `REFS` (bits 0..=23) counts the references still held, `STARTED`
    /// (bit 24) says a status was set, `TAG` (bits 25..=26) and `ERRNO` (bits 32..=63)
    /// encode that status.
    word: AtomicU64,
}

impl CompletionGate {
    /// The most references a gate can count.
    pub const MAX_REFS: u32 = REFS_MASK as u32;

    /// A gate with one reference (the execution path's) and no status.
    pub fn new() -> CompletionGate {
        CompletionGate {
            word: AtomicU64::new(1),
        }
    }

    /// A gate with `refs` references (one per path that may run) and no status.
    ///
    /// Fails with [`ErrorKind::OutOfRange`] if `refs` is 0 (a gate with no reference is
    /// already complete, without a status) or above [`Self::MAX_REFS`].
    pub fn with_refs(refs: u32) -> Result<CompletionGate> {
        if refs == 0 || refs > Self::MAX_REFS {
            return Err(TOO_MANY_REFS);
        }
        Ok(CompletionGate {
            word: AtomicU64::new(u64::from(refs)),
        })
    }

    /// Apply `f` to the word in one compare-exchange loop. `f` returns the new word, or an
    /// error to give up with (the word unchanged). `success` orders the winning exchange;
    /// `f` also gets to pick it from the word it saw.
    #[inline]
    fn update<T>(
        &self,
        mut f: impl FnMut(u64) -> core::result::Result<(u64, Ordering, T), Error>,
    ) -> Result<T> {
        // Relaxed: the first read only seeds the loop; the compare-exchange below checks it
        // and its own ordering is the one that counts.
        let mut current = self.word.load(Ordering::Relaxed);
        loop {
            let (new, success, out) = f(current)?;
            // Failure is Relaxed: a failed exchange only hands back the current value to
            // retry with; nothing is read on the strength of it.
            match self
                .word
                .compare_exchange_weak(current, new, success, Ordering::Relaxed)
            {
                Ok(_) => return Ok(out),
                Err(seen) => current = seen,
            }
        }
    }

    /// Take one more reference, for a path that will run later (a timer about to be
    /// armed, a request being marked cancelable).
    ///
    /// Fails if the request already completed (the new path must not run) or the count is
    /// at [`Self::MAX_REFS`].
    pub fn try_acquire(&self) -> Result<()> {
        self.update(|word| {
            let refs = word & REFS_MASK;
            if refs == 0 {
                return Err(ALREADY_COMPLETED);
            }
            if refs == REFS_MASK {
                return Err(TOO_MANY_REFS);
            }
            // Relaxed, as in `Arc::clone`: the caller reaches the gate through a path that
            // already holds a reference, so the request cannot complete under it; taking a
            // reference publishes nothing and reads nothing but this word.
            Ok((word + 1, Ordering::Relaxed, ()))
        })
    }

    /// Begin completion with `status` unless a status was already set (first setter wins).
    ///
    /// Returns `true` if this call set the status. Returns `false` if another path set it
    /// first — that path decides the outcome; this caller just drops its reference — or if
    /// the request already completed.
    pub fn begin_completion(&self, status: Status) -> bool {
        self.set_status(status, false)
    }

    /// Set `status`, overriding any status already set (the seed's `overrideStatus`: a
    /// device error reported by the final transfer beats an earlier cancel).
    ///
    /// Returns `false` only if the request already completed: the final status is frozen.
    pub fn force_status(&self, status: Status) -> bool {
        self.set_status(status, true)
    }

    fn set_status(&self, status: Status, force: bool) -> bool {
        let bits = status.encode() | STARTED;
        self.update(|word| {
            if word & REFS_MASK == 0 || (!force && word & STARTED != 0) {
                return Err(ALREADY_COMPLETED);
            }
            // Release: whatever this path wrote before deciding the status (a byte count,
            // say) happens-before any thread that reads the status with the Acquire load in
            // `status()`, or that completes the request (the final AcqRel exchange in
            // `release` reads this value through the word's modification order).
            Ok(((word & !STATUS_MASK) | bits, Ordering::Release, ()))
        })
        .is_ok()
    }

    /// Drop one reference. Returns `Ok(Some(status))` to exactly one caller — the one that
    /// dropped the last reference, who must now complete the request with `status` — and
    /// `Ok(None)` to the others.
    ///
    /// Fails, leaving the gate unchanged, if no reference is left, or if this would drop
    /// the last reference while no status was set (set one first).
    pub fn release(&self) -> Result<Option<Status>> {
        self.update(release_step)
    }

    /// Begin completion with `status` (overriding any earlier status if `force`) and drop
    /// this caller's reference, in one atomic step. Returns what [`release`](Self::release)
    /// returns.
    ///
    /// Fails, leaving the gate unchanged, if no reference is left.
    pub fn complete(&self, status: Status, force: bool) -> Result<Option<Status>> {
        let bits = status.encode() | STARTED;
        self.update(|word| {
            let word = if force || word & STARTED == 0 {
                (word & !STATUS_MASK) | bits
            } else {
                word
            };
            release_step(word)
        })
    }

    /// The status set so far, if any (the final status once [`is_completed`]).
    ///
    /// [`is_completed`]: Self::is_completed
    pub fn status(&self) -> Option<Status> {
        // Acquire: pairs with the Release of the path that set the status, so a caller that
        // sees the status also sees what that path wrote before setting it.
        Status::decode(self.word.load(Ordering::Acquire))
    }

    /// True once a status has been set (begin-completion ran).
    pub fn completion_started(&self) -> bool {
        // Acquire: as in `status()`.
        self.word.load(Ordering::Acquire) & STARTED != 0
    }

    /// The number of references still held (0 once the request completed). A snapshot:
    /// other paths may change it at once.
    pub fn refs(&self) -> u32 {
        // Acquire: as in `status()`; a caller that sees 0 also sees the completer's view.
        (self.word.load(Ordering::Acquire) & REFS_MASK) as u32
    }

    /// True once the last reference was dropped (the request completed).
    pub fn is_completed(&self) -> bool {
        self.refs() == 0
    }
}

/// One reference dropped from `word` (which may already carry a status just set).
#[inline]
fn release_step(word: u64) -> core::result::Result<(u64, Ordering, Option<Status>), Error> {
    let refs = word & REFS_MASK;
    if refs == 0 {
        return Err(NO_REFERENCE);
    }
    if refs == 1 {
        if word & STARTED == 0 {
            return Err(NO_STATUS);
        }
        // AcqRel on the last reference: Release publishes this path's writes like every
        // other drop; Acquire makes every other path's writes (each published by its own
        // Release drop, all in this word's release sequence) visible to the completer, as
        // in `Arc::drop`.
        return Ok((word - 1, Ordering::AcqRel, Status::decode(word)));
    }
    // Release: everything this path did to the request happens-before the completion, which
    // the last dropper runs after its Acquire.
    Ok((word - 1, Ordering::Release, None))
}

impl Default for CompletionGate {
    fn default() -> CompletionGate {
        CompletionGate::new()
    }
}

impl fmt::Debug for CompletionGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Acquire: as in `status()`; one load so refs and status are from the same instant.
        let word = self.word.load(Ordering::Acquire);
        f.debug_struct("CompletionGate")
            .field("refs", &(word & REFS_MASK))
            .field("status", &Status::decode(word))
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
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
}

/// Model checks with loom: `RUSTFLAGS="--cfg loom" cargo test --release --lib gate`.
///
/// Each model runs the paths of one request — transfer completion, cancel routine, timer
/// routine — on their own threads and checks, in every interleaving loom explores, that the
/// request completes exactly once, with the status of the path that won begin-completion,
/// and that the completer sees every path's writes.
#[cfg(all(test, loom))]
mod loom_tests {
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
        /// The seed's "cancelable" mark: whoever clears it (the cancel routine by running,
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

        /// The seed's AttemptRequestCompletion: drop a reference, complete if last.
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

        /// The transfer-complete path (the seed's DMA callback for the final transfer).
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

    #[test]
    fn gate_transfer_vs_cancel() {
        model(|| {
            let r = Request::new(true, false);
            let c = r.clone();
            let t = thread::spawn(move || c.cancel());
            r.transfer_complete(Status::Success, false);
            t.join().unwrap();
            r.check();
        });
    }

    #[test]
    fn gate_transfer_vs_timer_queued_never_run() {
        // Exec + timer references. Either the timer runs (TimedOut may win) or the transfer
        // path stops it while still queued and drops its reference from the cancel-timer
        // path; the request completes once either way.
        model(|| {
            let r = Request::new(false, true);
            let c = r.clone();
            let t = thread::spawn(move || c.timer_fires());
            r.transfer_complete(Status::Success, false);
            t.join().unwrap();
            r.check();
        });
    }

    #[test]
    fn gate_transfer_vs_cancel_vs_timer() {
        model(|| {
            let r = Request::new(true, true);
            let (c1, c2) = (r.clone(), r.clone());
            let cancel = thread::spawn(move || c1.cancel());
            let timer = thread::spawn(move || c2.timer_fires());
            r.transfer_complete(Status::Success, false);
            cancel.join().unwrap();
            timer.join().unwrap();
            r.check();
        });
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
                if g.try_acquire().is_ok()
                    && g.complete(Status::Cancelled, false).unwrap().is_some()
                {
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
    }

    impl BrokenGate {
        fn begin(&self, s: Status) -> bool {
            if !self.started.load(Ordering::SeqCst) {
                self.status.store(s.encode(), Ordering::SeqCst);
                self.started.store(true, Ordering::SeqCst);
                true
            } else {
                false
            }
        }

        fn release(&self) -> Option<u64> {
            let refs = self.refs.load(Ordering::SeqCst);
            self.refs.store(refs - 1, Ordering::SeqCst);
            (refs == 1).then(|| self.status.load(Ordering::SeqCst))
        }
    }

    /// Loom finds the interleaving where both paths see `started == false` and both win
    /// begin-completion (each then believes its status is the request's).
    #[test]
    #[should_panic(expected = "two winners")]
    fn gate_broken_check_then_act_fails_under_loom() {
        model(|| {
            let gate = Arc::new(BrokenGate {
                refs: AtomicU64::new(2),
                started: AtomicBool::new(false),
                status: AtomicU64::new(0),
            });
            let completions = Arc::new(AtomicUsize::new(0));
            let winners = Arc::new(AtomicUsize::new(0));
            let (g, n, w) = (gate.clone(), completions.clone(), winners.clone());
            let t = thread::spawn(move || {
                if g.begin(Status::Cancelled) {
                    w.fetch_add(1, Ordering::Relaxed);
                }
                if g.release().is_some() {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            });
            if gate.begin(Status::Success) {
                winners.fetch_add(1, Ordering::Relaxed);
            }
            if gate.release().is_some() {
                completions.fetch_add(1, Ordering::Relaxed);
            }
            t.join().unwrap();
            assert_eq!(winners.load(Ordering::Relaxed), 1, "two winners");
            assert_eq!(completions.load(Ordering::Relaxed), 1, "lost completion");
        });
    }

    /// The reference count alone, decremented with a load and a store: loom finds the
    /// interleaving where both paths read `refs == 2`, both store 1, and nobody completes.
    #[test]
    #[should_panic(expected = "lost completion")]
    fn gate_broken_refcount_fails_under_loom() {
        model(|| {
            let gate = Arc::new(BrokenGate {
                refs: AtomicU64::new(2),
                started: AtomicBool::new(true),
                status: AtomicU64::new(0),
            });
            let completions = Arc::new(AtomicUsize::new(0));
            let (g, n) = (gate.clone(), completions.clone());
            let t = thread::spawn(move || {
                if g.release().is_some() {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            });
            if gate.release().is_some() {
                completions.fetch_add(1, Ordering::Relaxed);
            }
            t.join().unwrap();
            assert_eq!(completions.load(Ordering::Relaxed), 1, "lost completion");
        });
    }
}
