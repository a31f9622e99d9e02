//! Exactly-once completion of a request raced by several paths.
//!
//! A request that can finish through more than one path — its transfer completing, a
//! cancel, a deadline timer — must complete exactly once, with one status. Two rules settle
//! it: *begin-completion* (the first path to decide sets the status; a device error may
//! force an override) plus a *completion reference count*: each path that may still touch
//! the request holds a reference, and whoever drops the last one completes the request.
//! [`CompletionGate`] is that pattern as a small lock-free primitive: one atomic word, no
//! lock, no allocation.
//!
//! # Protocol
//!
//! 1. Create the gate with one reference per path that may run ([`CompletionGate::with_refs`]),
//!    or take more later with [`CompletionGate::try_acquire`] while the request is live.
//! 2. A path that decides the outcome calls [`CompletionGate::begin_completion`]: the first
//!    status set wins, later ones are ignored (the call returns `false`).
//!    [`CompletionGate::force_status`] overrides whatever was set (for a
//!    device error that must beat a cancel).
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

    /// Set `status`, overriding any status already set (for instance, a
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
mod tests;

/// Model checks with loom: `RUSTFLAGS="--cfg loom" cargo test --release --lib gate`.
///
/// Each model runs the paths of one request — transfer completion, cancel routine, timer
/// routine — on their own threads and checks, in every interleaving loom explores, that the
/// request completes exactly once, with the status of the path that won begin-completion,
/// and that the completer sees every path's writes.
#[cfg(all(test, loom))]
mod loom_tests;
