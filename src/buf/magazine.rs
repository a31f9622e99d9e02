//! Per-thread magazines: a small cache of free slots in front of a pool's shared free list.
//!
//! A thread that returns a slot keeps it in its magazine for its own next `get`, so a
//! get/put pair on one thread touches no shared cache line and executes one fence (the
//! owner's pop), where the shared list costs two CASes and the waiter handshake's fence.
//!
//! Each pool owns [`MAGAZINES`] magazines, each holding at most the pool's `mag_cap` slots
//! (see `PoolInner::new`); a thread claims one per pool on first use, through its
//! thread-local `Cache` (in `pool.rs`), and gives it back — slots included — when the
//! thread exits or when it needs the cache entry for another pool. A magazine is a bounded
//! Chase-Lev deque (Lê, Pop, Cohen, Zappa Nardelli, *Correct and Efficient Work-Stealing
//! for Weak Memory Models*, PPoPP 2013): its owner pushes and pops at the bottom, and any
//! other thread may *steal* from the top. Stealing is what keeps a parked slot from being
//! stranded: a `get` that finds the shared list empty steals from the other threads'
//! magazines before it reports exhaustion or waits, and a waiting `get` (blocking or
//! async) steals once more after it registers, through a handshake with `put` that no
//! return can slip past (see `PoolInner::push_own`, `PoolInner::take_for_waiter`).
//!
//! Bound and policy:
//! - a magazine holds at most `mag_cap = min(MAG_SLOTS, slots / (2 * MAGAZINES))` = `min(32,
//!   slots / 16)` slots, and a pool has `MAGAZINES` = 8, so at most half of a pool is ever
//!   parked; pools under 16 slots have no magazines (the shared list only);
//! - `put` keeps the slot in the thread's magazine only while it has room and no `get` is
//!   waiting; otherwise the slot goes to the oldest waiter, or to the shared list;
//! - `get` takes from its own magazine (topping it up from the shared list when one slot
//!   is left and no `get` waits, so the owner rarely races a thief), then the shared
//!   list, then steals from the other magazines; a `get` that waits registers, then
//!   steals what the magazines hold, so a slot parked in an idle thread's magazine never
//!   keeps a waiter waiting;
//! - a thread's exit, or its need for the cache entry (more than `CACHE_ENTRIES` pools
//!   on one thread), hands its magazine back; the pool's last handle empties them all.
//!
//! The magazines hold slot indices, each with the slot's *credit* (one strong count of
//! the pool, see `PoolInner`), so that a get or put through a magazine changes no
//! reference count. When the pool's last handle drops, every magazine is emptied and its
//! credits released (`PoolInner::orphan`, racing returns through the handshake modelled
//! below), so an idle thread's magazine never keeps a dropped pool's arena mapped. The
//! cache entry that names a pool's magazine holds a `Weak` reference: it keeps no arena
//! alive, and it makes the pool's address a safe key (the allocation cannot be reused by
//! another pool while the entry exists); a dead pool's entry is discarded when next
//! evicted or at thread exit.

use crate::sync::{fence, AtomicBool, AtomicU32, AtomicUsize, Ordering};

/// Asymmetric fences: the magazine's owner (every `get` and `put`) pays a compiler
/// fence where the Chase-Lev protocol needs a StoreLoad fence, and the rare other side (a
/// thief, a pool's last handle being dropped) pays for both with `membarrier(2)`
/// (`MEMBARRIER_CMD_PRIVATE_EXPEDITED`): the kernel makes every running thread of the
/// process execute a full memory barrier before the call returns, and a thread not
/// running has passed one in its context switch. So for any owner, either its accesses
/// before the compiler fence are visible to the heavy side after the call, or its loads
/// after the fence see the heavy side's stores before the call — exactly the guarantee a
/// pair of SeqCst fences gives (this is the "asymmetric Dekker" of liburcu and folly).
///
/// Without `membarrier` (old kernel, seccomp), both sides use SeqCst fences. Loom cannot
/// see `membarrier`, so the models run with SeqCst fences on both sides: they check the
/// protocol, and the paragraph above is why the substitution keeps it correct.
pub(crate) mod asym {
    #[cfg(not(loom))]
    use std::sync::atomic::{AtomicU8, Ordering};

    /// 0: not probed yet; 1: `membarrier` registered; 2: not available.
    #[cfg(not(loom))]
    static STATE: AtomicU8 = AtomicU8::new(0);

    const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    /// Probe and register once, before any pool exists (called by `PoolInner::new`; a
    /// pool reaches other threads only through synchronization that carries this
    /// store, so every owner and thief reads the same, final state).
    pub(crate) fn init() {
        #[cfg(not(loom))]
        if STATE.load(Ordering::Relaxed) == 0 {
            // SAFETY: membarrier takes two integers and touches no memory of ours.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_membarrier,
                    MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
                    0,
                    0,
                )
            };
            let state = if r == 0 { 1 } else { 2 };
            // Relaxed: a one-way, idempotent probe; whoever stores first wins and every
            // later value is the same (registration cannot be undone).
            let _ = STATE.compare_exchange(0, state, Ordering::Relaxed, Ordering::Relaxed);
        }
        let _ = (
            MEMBARRIER_CMD_PRIVATE_EXPEDITED,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
        );
    }

    #[cfg(not(loom))]
    #[inline(always)]
    fn available() -> bool {
        // Relaxed: see `init`.
        STATE.load(Ordering::Relaxed) == 1
    }

    /// The owner's side.
    #[inline(always)]
    pub(crate) fn light(site: &'static str) {
        #[cfg(not(loom))]
        if available() {
            std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
            return;
        }
        super::fence(super::Ordering::SeqCst, site);
    }

    /// The other side: acts as a SeqCst fence on every thread of the process.
    pub(crate) fn heavy(site: &'static str) {
        #[cfg(not(loom))]
        if available() {
            // SAFETY: as in `init`. After a successful registration this command does not
            // fail (EINVAL would mean an unregistered process); a SeqCst fence is issued
            // as well, which makes the call a fence for this thread too.
            unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) };
        }
        super::fence(super::Ordering::SeqCst, site);
    }
}

/// Magazines per pool: at most this many threads cache slots of one pool at once; the
/// others use the shared free list directly.
pub(crate) const MAGAZINES: usize = 8;

/// Array size of one magazine (a power of two); a pool's `mag_cap` is at most this.
pub(crate) const MAG_SLOTS: usize = 32;

/// One magazine: a bounded Chase-Lev deque of slot indices.
#[derive(Debug)]
pub(crate) struct Magazine {
    /// Claimed by a thread (which alone may `push`/`pop`).
    owner: AtomicBool,
    /// The owner is between announcing a return and finishing it (see `PoolInner::put`):
    /// the pool's last handle waits for it to clear before emptying this magazine, so a
    /// returning thread never touches a pool that its own push let be freed.
    busy: AtomicBool,
    /// Next index a thief takes; only ever increases (CAS by thieves, and by the owner
    /// for the last element).
    top: AtomicUsize,
    /// Next index the owner pushes to; written by the owner only.
    bottom: AtomicUsize,
    slots: [AtomicU32; MAG_SLOTS],
}

impl Magazine {
    pub(crate) fn new() -> Magazine {
        Magazine {
            owner: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            top: AtomicUsize::new(0),
            bottom: AtomicUsize::new(0),
            slots: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    /// Claim this magazine for the calling thread; false if another thread has it.
    pub(crate) fn claim(&self) -> bool {
        // Acquire: pairs with the Release in `release`, so the previous owner's last
        // `bottom` store happens-before our owner-only Relaxed reads of it.
        !self.owner.load(Ordering::Relaxed)
            && self
                .owner
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether a thread has claimed it (a snapshot, for tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn claimed(&self) -> bool {
        self.owner.load(Ordering::Relaxed)
    }

    /// Give the (emptied) magazine up; the caller must be its owner.
    pub(crate) fn release(&self) {
        // Release: see `claim`.
        self.owner.store(false, Ordering::Release);
    }

    /// Owner only: announce a return (`true`) or finish it (`false`). Relaxed to set: the
    /// caller's light fence orders it before its load of `orphaned`. Release to clear: the
    /// push before it happens-before the last handle's Acquire `wait_idle` that sees it
    /// cleared, and the clear is the returning thread's last access to the pool.
    #[inline]
    pub(crate) fn set_busy(&self, on: bool) {
        let order = if on {
            Ordering::Relaxed
        } else {
            Ordering::Release
        };
        self.busy.store(on, order);
    }

    /// The pool's last handle: wait until the owner is not mid-return. The owner's window
    /// is a handful of instructions; if it was preempted inside it, yield until it runs.
    pub(crate) fn wait_idle(&self) {
        // Acquire: pairs with the Release clear in `set_busy`.
        while self.busy.load(Ordering::Acquire) {
            #[cfg(loom)]
            loom::thread::yield_now();
            #[cfg(not(loom))]
            std::thread::yield_now();
        }
    }

    /// Owner only: keep `slot`, if fewer than `cap` are held.
    #[inline]
    pub(crate) fn push(&self, slot: u32, cap: usize) -> bool {
        // Relaxed: only the owner writes `bottom`.
        let b = self.bottom.load(Ordering::Relaxed);
        // Acquire: a thief read `slots[t]` before its CAS moved `top` past `t`; seeing that
        // CAS orders the read before our overwrite of the same array entry below.
        let t = self.top.load(Ordering::Acquire);
        if b.wrapping_sub(t) >= cap {
            return false;
        }
        // Relaxed: published by the Release store of `bottom` just after.
        self.slots[b % MAG_SLOTS].store(slot, Ordering::Relaxed);
        // Release: the slot index, and everything this thread did to the slot's bytes
        // before returning it, happen-before a thief's Acquire load of `bottom` that sees
        // it (and thus its use of the slot).
        self.bottom.store(b.wrapping_add(1), Ordering::Release);
        true
    }

    /// Owner only: the most recently pushed slot, if any.
    #[inline]
    pub(crate) fn pop(&self) -> Option<u32> {
        // Relaxed: owner-only `bottom`; `top` may be stale (smaller), which only sends us
        // down the full protocol below. When `b == t` the magazine is empty for sure:
        // `top` never exceeds the owner's `bottom` while the owner is not in `pop`.
        let b = self.bottom.load(Ordering::Relaxed);
        if b == self.top.load(Ordering::Relaxed) {
            return None;
        }
        let b = b.wrapping_sub(1);
        // Reserve the bottom element, then look at `top`: the (light) fence pairs with the
        // (heavy) one in `steal`, so that either a thief sees the smaller `bottom` or we see its
        // larger `top` — never both taking the same element.
        self.bottom.store(b, Ordering::Relaxed);
        asym::light("magazine.pop");
        let t = self.top.load(Ordering::Relaxed);
        if t <= b {
            let v = self.slots[b % MAG_SLOTS].load(Ordering::Relaxed);
            if t == b {
                // The last element: a thief may be taking it too; the CAS on `top`
                // decides. SeqCst as in the paper (it orders with the thieves' CAS).
                let won = self
                    .top
                    .compare_exchange(t, t.wrapping_add(1), Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok();
                self.bottom.store(b.wrapping_add(1), Ordering::Relaxed);
                return won.then_some(v);
            }
            Some(v)
        } else {
            // A thief took it first.
            self.bottom.store(b.wrapping_add(1), Ordering::Relaxed);
            None
        }
    }

    /// Any thread: take the oldest slot, if any.
    pub(crate) fn steal(&self) -> Option<u32> {
        loop {
            // Acquire on both: the owner's Release store of `bottom` that published the
            // slot happens-before our use of it.
            let t = self.top.load(Ordering::Acquire);
            asym::heavy("magazine.steal");
            let b = self.bottom.load(Ordering::Acquire);
            if t >= b || b.wrapping_sub(t) > MAG_SLOTS {
                // Empty (or `bottom` read mid-pop: the owner reserved the last one).
                return None;
            }
            // Relaxed: published by the Acquire load of `bottom` above; the CAS below
            // confirms nobody took index `t` meanwhile (so the owner did not overwrite it).
            let v = self.slots[t % MAG_SLOTS].load(Ordering::Relaxed);
            if self
                .top
                .compare_exchange(t, t.wrapping_add(1), Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                return Some(v);
            }
        }
    }

    /// Slots held now (a snapshot; exact when the owner and thieves are quiescent).
    pub(crate) fn len(&self) -> usize {
        // Relaxed: a statistic.
        let t = self.top.load(Ordering::Relaxed);
        let b = self.bottom.load(Ordering::Relaxed);
        b.saturating_sub(t).min(MAG_SLOTS)
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;
