//! One provided-buffer ring (`IORING_REGISTER_PBUF_RING`): the [`BufRing`] token naming
//! it, the ring's record of it with the entries array shared with the kernel, and the
//! [`BufRingLease`] that retires it. The ring registers, refills and retires them (see
//! `provided`).
//!
//! Each ring entry points at a slot's *data* start, so the slot's header room stays in
//! front of the received bytes exactly as with an ordinary read. While a slot sits in the
//! buffer ring the ring holds its `PoolBuf` (state: in flight); when a CQE names the
//! buffer id, that `PoolBuf` moves into the completion. The ring tops the buffer ring up
//! from the pool's free list every time it is driven.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;

use crate::buf::{BufferPool, PoolBuf};

/// Size of one `struct io_uring_buf` entry.
pub(super) const ENTRY: usize = 16;
/// Offset of the ring's `tail` (it overlays the first entry's `resv` field).
const TAIL: usize = 14;

/// A provided-buffer ring registered with a [`Ring`](super::Ring): a small `Copy` token naming the
/// buffer group. Made by [`Ring::register_buf_ring`](super::Ring::register_buf_ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufRing {
    pub(crate) ring: u32,
    pub(crate) bgid: u16,
}

impl BufRing {
    /// The buffer group id.
    pub fn group(&self) -> u16 {
        self.bgid
    }
}

/// The ring's record of one provided-buffer ring.
#[derive(Debug)]
pub(crate) struct BufRingState {
    pub(crate) bgid: u16,
    /// The shared entries array; the kernel reads it. Mapped, so page-aligned.
    pub(super) map: memmap2::MmapMut,
    pub(super) entries: u16,
    /// Our next tail position (the kernel owns the head).
    pub(super) tail: u16,
    pub(super) pool: BufferPool,
    /// Buffers currently offered to the kernel, by buffer id (= slot index).
    pub(super) provided: Vec<Option<PoolBuf>>,
    pub(super) offered: usize,
    pub(super) len: u32,
    /// The tail the kernel has seen (the last one stored to the shared ring).
    pub(super) published: u16,
    /// Most buffers offered at once: the ring's entries, or its share of the pool when
    /// other rings draw on the same pool. Recomputed at every refill.
    pub(super) cap: usize,
    /// Set by the owner's [`BufRingLease`] when it is dropped (from any thread).
    pub(super) retire: Arc<AtomicBool>,
    /// `retire` seen by the ring: no more refills; unregistered once unused.
    pub(super) retiring: bool,
    /// When the ring was last given a slot (a count over all rings): among rings with as
    /// few buffers offered, the one served longest ago comes first.
    pub(super) turn: u64,
    /// Its pool had no free slot during this refill.
    pub(super) dry: bool,
}

impl BufRingState {
    /// Offer one free pool slot to the kernel (written past the published tail; see
    /// [`publish`](Self::publish)). False when the pool has no free slot.
    pub(super) fn offer_one(&mut self) -> bool {
        let Ok(buf) = self.pool.try_get() else {
            return false;
        };
        let bid = buf.slot() as usize;
        let idx = (self.tail & (self.entries - 1)) as usize;
        let base = self.map.as_mut_ptr();
        let addr = buf.data_ptr() as u64;
        // SAFETY: `idx < entries`, so the 16-byte entry lies inside the mapping. The
        // kernel only reads entries between its head and our published tail, and this
        // one is past the tail until `publish` stores it. It is free: fewer than `entries`
        // buffers are offered (the callers keep `offered < cap <= entries`).
        unsafe {
            let e = base.add(idx * ENTRY);
            (e as *mut u64).write(addr);
            (e.add(8) as *mut u32).write(self.len);
            (e.add(12) as *mut u16).write(bid as u16);
        }
        buf.pool().set_in_flight(buf.slot(), true, true);
        self.provided[bid] = Some(buf);
        self.offered += 1;
        self.tail = self.tail.wrapping_add(1);
        true
    }

    /// Hand the entries written since the last call to the kernel.
    pub(super) fn publish(&mut self) {
        if self.tail == self.published {
            return;
        }
        // SAFETY: the tail is a naturally aligned u16 at offset 14 of the page-aligned
        // mapping, shared with the kernel, which reads it atomically.
        let tail = unsafe { &*(self.map.as_mut_ptr().add(TAIL) as *const AtomicU16) };
        // Release: the entry writes of `offer_one` must be visible before the kernel
        // (which loads the tail with acquire semantics) sees the new tail.
        tail.store(self.tail, Ordering::Release);
        self.published = self.tail;
    }

    /// Whether the owner gave the ring up (latched).
    pub(super) fn retiring(&mut self) -> bool {
        // Acquire: pairs with the Release in `BufRingLease::drop`; nothing else travels
        // with the flag, but it keeps the hand-over ordered for any future state.
        if !self.retiring && self.retire.load(Ordering::Acquire) {
            self.retiring = true;
        }
        self.retiring
    }

    /// The kernel consumed buffer `bid`: hand its `PoolBuf` over.
    pub(crate) fn take(&mut self, bid: u16) -> Option<PoolBuf> {
        let b = self.provided.get_mut(bid as usize)?.take()?;
        b.pool().set_in_flight(b.slot(), false, true);
        self.offered -= 1;
        Some(b)
    }

    /// Buffers currently offered to the kernel.
    pub(crate) fn offered(&self) -> usize {
        self.offered
    }

    /// The ring gave up on operations the kernel never returned (see `Ring::drop`): the
    /// kernel may still pick and write any offered buffer, so leak them all rather than
    /// return them to the pool.
    pub(crate) fn leak_offered(&mut self) {
        for b in self.provided.iter_mut().filter_map(Option::take) {
            std::mem::forget(b);
        }
        self.offered = 0;
    }
}

impl Drop for BufRingState {
    fn drop(&mut self) {
        // Only reached after the kernel has let go of this ring: the ring has drained
        // every operation (see `Ring::drop`), or `Ring::unregister_buf_ring` checked that
        // no multishot read uses it and unregistered it first.
        for b in self.provided.iter_mut().filter_map(Option::take) {
            b.pool().set_in_flight(b.slot(), false, true);
        }
    }
}

/// A provided-buffer ring held by an owner that may be dropped without access to its
/// [`Ring`](super::Ring) (a reader). Dropping the lease retires the buffer ring: on its next drives the
/// ring stops topping it up, cancels the multishot reads still using it, and once the
/// kernel has completed them unregisters it and returns its slots to the pool — never
/// while the kernel may still write them. Made by [`Ring::lease_buf_ring`](super::Ring::lease_buf_ring).
#[derive(Debug)]
pub(crate) struct BufRingLease {
    pub(super) br: BufRing,
    pub(super) retire: Arc<AtomicBool>,
}

impl BufRingLease {
    /// The buffer ring.
    pub(crate) fn buf_ring(&self) -> BufRing {
        self.br
    }
}

impl Drop for BufRingLease {
    fn drop(&mut self) {
        // Release: see `BufRingState::retiring`.
        self.retire.store(true, Ordering::Release);
    }
}
