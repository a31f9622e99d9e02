//! Provided-buffer rings (`IORING_REGISTER_PBUF_RING`, Linux 5.19): the kernel picks a
//! buffer from a ring of pool slots when data arrives, so a multishot read can run
//! without a buffer chosen up front.
//!
//! Each ring entry points at a slot's *data* start, so the slot's header room stays in
//! front of the received bytes exactly as with an ordinary read. While a slot sits in the
//! buffer ring the ring holds its `PoolBuf` (state: in flight); when a CQE names the
//! buffer id, that `PoolBuf` moves into the completion. The ring tops the buffer ring up
//! from the pool's free list every time it is driven.

use std::sync::atomic::{AtomicU16, Ordering};

use crate::buf::{BufferPool, PoolBuf};
use crate::error::{Error, Result};

use super::Ring;

/// Size of one `struct io_uring_buf` entry.
const ENTRY: usize = 16;
/// Offset of the ring's `tail` (it overlays the first entry's `resv` field).
const TAIL: usize = 14;

/// A provided-buffer ring registered with a [`Ring`]: a small `Copy` token naming the
/// buffer group. Made by [`Ring::register_buf_ring`].
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
    map: memmap2::MmapMut,
    entries: u16,
    /// Our next tail position (the kernel owns the head).
    tail: u16,
    pool: BufferPool,
    /// Buffers currently offered to the kernel, by buffer id (= slot index).
    provided: Vec<Option<PoolBuf>>,
    offered: usize,
    len: u32,
}

impl BufRingState {
    /// Offer free pool slots to the kernel until the ring is full or the pool is empty.
    /// Returns how many were added.
    pub(crate) fn replenish(&mut self) -> usize {
        let mut added = 0;
        while self.offered < self.entries as usize {
            let Ok(buf) = self.pool.try_get() else {
                break;
            };
            let bid = buf.slot() as usize;
            let idx = (self.tail & (self.entries - 1)) as usize;
            let base = self.map.as_mut_ptr();
            let addr = buf.data_ptr() as u64;
            // SAFETY: `idx < entries`, so the 16-byte entry lies inside the mapping. The
            // kernel only reads entries between its head and our published tail, and this
            // one is past the tail until the store below.
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
            added += 1;
        }
        if added > 0 {
            // SAFETY: the tail is a naturally aligned u16 at offset 14 of the page-aligned
            // mapping, shared with the kernel, which reads it atomically.
            let tail = unsafe { &*(self.map.as_mut_ptr().add(TAIL) as *const AtomicU16) };
            // Release: the entry writes above must be visible before the kernel (which
            // loads the tail with acquire semantics) sees the new tail.
            tail.store(self.tail, Ordering::Release);
        }
        added
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

impl Ring {
    /// Register a provided-buffer ring of `entries` (a power of two, at most 32768) slots
    /// from `pool` (which should have at most 65536 slots), for multishot reads
    /// ([`Op::read_multishot`](super::Op::read_multishot)). The ring keeps it topped up
    /// from the pool's free list whenever it is driven.
    pub fn register_buf_ring(&mut self, pool: &BufferPool, entries: u16) -> Result<BufRing> {
        if !self.caps.buf_ring {
            return Err(Error::unsupported("provided-buffer rings (Linux 5.19)"));
        }
        // A power-of-two u16 is at most 32768 already.
        if !entries.is_power_of_two() {
            return Err(Error::invalid(
                "buffer ring entries must be a power of two <= 32768",
            ));
        }
        let g = pool.geometry();
        if g.slots > 65536 {
            return Err(Error::invalid(
                "buffer ring pools may have at most 65536 slots",
            ));
        }
        let len = u32::try_from(g.capacity).map_err(|_| Error::invalid("slot too large"))?;
        // The next group id not in use, counting on from the last one: the id of an
        // unregistered ring comes back only after the count wraps, so a stale `BufRing`
        // token does not name a new ring any time soon.
        let bgid = (0..=u16::MAX)
            .map(|k| self.next_bgid.wrapping_add(k))
            .find(|id| self.buf_rings.iter().all(|s| s.bgid != *id))
            .ok_or(Error::invalid("every buffer group id is in use"))?;
        let bytes = (entries as usize * ENTRY).max(4096);
        let mut map = memmap2::MmapOptions::new()
            .len(bytes)
            .map_anon()
            .map_err(|e| Error::from_io(&e))?;
        // SAFETY: the mapping is `entries * 16` bytes or more and stays alive as long as
        // the `BufRingState` that owns it, which the ring keeps until after the io_uring
        // instance is closed (field order of `Ring`).
        unsafe {
            self.uring.submitter().register_buf_ring_with_flags(
                map.as_mut_ptr() as u64,
                entries,
                bgid,
                0,
            )
        }
        .map_err(|e| Error::from_io(&e))?;
        self.next_bgid = bgid.wrapping_add(1);
        let mut st = BufRingState {
            bgid,
            map,
            entries,
            tail: 0,
            pool: pool.clone(),
            provided: (0..g.slots).map(|_| None).collect(),
            offered: 0,
            len,
        };
        st.replenish();
        self.buf_rings.push(st);
        Ok(BufRing {
            ring: self.id,
            bgid,
        })
    }

    /// Buffers of `br` currently offered to the kernel.
    pub fn buf_ring_offered(&self, br: BufRing) -> usize {
        self.buf_ring_pos(br)
            .map_or(0, |i| self.buf_rings[i].offered())
    }

    /// Where `br` sits in this ring's list, if it was registered here.
    pub(super) fn buf_ring_pos(&self, br: BufRing) -> Option<usize> {
        if br.ring != self.id {
            return None;
        }
        self.buf_rings.iter().position(|s| s.bgid == br.bgid)
    }

    /// Unregister a provided-buffer ring (`IORING_UNREGISTER_PBUF_RING`) and give the
    /// slots it still offers back to their pool. Refused with
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) while a multishot read
    /// using it is in flight (the kernel could still pick one of its buffers), and for a
    /// ring that is not registered here.
    pub fn unregister_buf_ring(&mut self, br: BufRing) -> Result<()> {
        let pos = self
            .buf_ring_pos(br)
            .ok_or(Error::invalid("buffer ring not registered with this ring"))?;
        let in_use = self.ops.iter().any(|(_, e)| {
            e.multishot == Some(br.bgid) && matches!(e.state, super::EntryState::InKernel(_))
        });
        if in_use {
            return Err(Error::invalid(
                "a multishot read still uses this buffer ring",
            ));
        }
        self.uring
            .submitter()
            .unregister_buf_ring(br.bgid)
            .map_err(|e| Error::from_io(&e))?;
        // The kernel no longer reads the entries: dropping the state returns the offered
        // slots to the pool and unmaps the entries.
        self.buf_rings.swap_remove(pos);
        Ok(())
    }

    pub(super) fn replenish_buf_rings(&mut self) {
        for br in &mut self.buf_rings {
            br.replenish();
        }
    }

    pub(super) fn buf_ring_mut(&mut self, bgid: u16) -> Option<&mut BufRingState> {
        self.buf_rings.iter_mut().find(|s| s.bgid == bgid)
    }
}
