//! Provided-buffer rings (`IORING_REGISTER_PBUF_RING`, Linux 5.19): the kernel picks a
//! buffer from a ring of pool slots when data arrives, so a multishot read can run
//! without a buffer chosen up front.
//!
//! Several buffer rings may share one pool. Slots offered to the kernel stay with it until
//! data arrives, so the refill is fair: one slot at a time to the ring with the fewest
//! offered (the one served longest ago among equals), and no ring beyond its share of the
//! pool (the pool's slots divided among the rings drawing on it). A busy ring thus cannot
//! win every refill, nor a silent one keep the others dry once their share comes back.
//!
//! An owner that may be dropped without access to the ring (a reader) holds a
//! [`BufRingLease`]: dropping it retires the buffer ring — the ring stops topping it up,
//! cancels the multishot reads still using it and, once the kernel has completed them,
//! unregisters it and gives its slots back.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::buf::BufferPool;
use crate::error::{Error, ErrorKind, Result};

use super::buf_ring::{BufRing, BufRingLease, BufRingState, ENTRY};
use super::{Backend, Ring};

impl Ring {
    /// Register a provided-buffer ring of `entries` (a power of two, at most 32768) slots
    /// from `pool` (which should have at most 65536 slots), for multishot reads
    /// ([`Op::read_multishot`](super::Op::read_multishot)). The ring keeps it topped up
    /// from the pool's free list whenever it is driven, up to `entries` buffers — or, when
    /// several buffer rings draw on the same pool, up to its fair share of the pool's
    /// slots (refilled in turn with them).
    pub fn register_buf_ring(&mut self, pool: &BufferPool, entries: u16) -> Result<BufRing> {
        let uring = match &self.backend {
            Backend::Uring(uring) if self.caps.buf_ring => uring,
            Backend::Uring(_) => {
                return Err(Error::unsupported("provided-buffer rings (Linux 5.19)"))
            }
            Backend::Threads(_) => {
                return Err(Error::unsupported(
                    "provided-buffer rings (not on the threads backend)",
                ))
            }
        };
        // A power-of-two u16 is at most 32768 already.
        if !entries.is_power_of_two() {
            return Err(Error::new(ErrorKind::NotPowerOfTwo {
                what: "buffer ring entries",
                value: entries.into(),
            }));
        }
        let g = pool.geometry();
        if g.slots > 65536 {
            return Err(Error::out_of_range(
                "slots of a buffer ring's pool",
                1,
                65536,
            ));
        }
        let len = u32::try_from(g.capacity).map_err(|_| {
            Error::out_of_range("slot length of a buffer ring's pool", 1, u32::MAX.into())
        })?;
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
            uring.submitter().register_buf_ring_with_flags(
                map.as_mut_ptr() as u64,
                entries,
                bgid,
                0,
            )
        }
        .map_err(|e| Error::from_io(&e))?;
        self.next_bgid = bgid.wrapping_add(1);
        self.buf_rings.push(BufRingState {
            bgid,
            map,
            entries,
            tail: 0,
            pool: pool.clone(),
            provided: (0..g.slots).map(|_| None).collect(),
            offered: 0,
            len,
            published: 0,
            cap: 0,
            retire: Arc::new(AtomicBool::new(false)),
            retiring: false,
            turn: 0,
            dry: false,
        });
        self.replenish_buf_rings();
        Ok(BufRing {
            ring: self.id,
            bgid,
        })
    }

    /// [`register_buf_ring`](Self::register_buf_ring), held by a [`BufRingLease`] that
    /// retires it when dropped.
    pub(crate) fn lease_buf_ring(
        &mut self,
        pool: &BufferPool,
        entries: u16,
    ) -> Result<BufRingLease> {
        let br = self.register_buf_ring(pool, entries)?;
        let pos = self
            .buf_ring_pos(br)
            .ok_or(Error::invalid("buffer ring vanished"))?;
        Ok(BufRingLease {
            br,
            retire: self.buf_rings[pos].retire.clone(),
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
    /// [`ErrorKind::InProgress`] while a multishot read
    /// using it is in flight (the kernel could still pick one of its buffers), and with
    /// [`ErrorKind::WrongRing`] for a ring that is not
    /// registered here.
    pub fn unregister_buf_ring(&mut self, br: BufRing) -> Result<()> {
        let pos = self
            .buf_ring_pos(br)
            .ok_or(Error::new(ErrorKind::WrongRing {
                what: "buffer ring",
            }))?;
        if self.buf_ring_users(br.bgid, false) > 0 {
            return Err(Error::new(ErrorKind::InProgress {
                what: "a multishot read on this buffer ring",
            }));
        }
        self.remove_buf_ring(pos)
    }

    /// `IORING_UNREGISTER_PBUF_RING` for the ring at `pos`, which no operation in the
    /// kernel uses; then drop its state, which returns the offered slots to the pool and
    /// unmaps the entries (the kernel no longer reads them).
    fn remove_buf_ring(&mut self, pos: usize) -> Result<()> {
        // Only io_uring rings have buffer rings (`register_buf_ring`).
        if let Backend::Uring(uring) = &self.backend {
            uring
                .submitter()
                .unregister_buf_ring(self.buf_rings[pos].bgid)
                .map_err(|e| Error::from_io(&e))?;
        }
        self.buf_rings.swap_remove(pos);
        Ok(())
    }

    /// Multishot reads in the kernel picking buffers from group `bgid`; with `cancel`,
    /// ask the kernel to cancel those not already asked.
    fn buf_ring_users(&mut self, bgid: u16, cancel: bool) -> usize {
        let mut users = 0;
        // Indexing by key (not an iterator) so that `cancel` can borrow the ring; the
        // op table is small and this runs only for a retiring ring or an unregister.
        let keys = self.ops.capacity();
        for key in 0..keys {
            let Some(e) = self.ops.get(key) else { continue };
            if e.multishot != Some(bgid) || !matches!(e.state, super::EntryState::InKernel(_)) {
                continue;
            }
            users += 1;
            if cancel && !e.cancel_requested {
                let id = super::OpId::new(self.id, key as u32, e.gen);
                self.cancel(id);
            }
        }
        users
    }

    /// Retiring ring at `pos`: cancel its users, unregister it once none is left. True
    /// when it is gone.
    fn retire_step(&mut self, pos: usize) -> bool {
        let bgid = self.buf_rings[pos].bgid;
        // If unregistering fails the ring keeps its state (the kernel may still read the
        // entries) and tries again on the next drive.
        self.buf_ring_users(bgid, true) == 0 && self.remove_buf_ring(pos).is_ok()
    }

    /// The last completion of a multishot read from group `bgid` was reaped: a retiring
    /// ring with no other user goes now, so that a ring driven until idle has given every
    /// slot back.
    pub(super) fn multishot_ended(&mut self, bgid: u16) {
        if let Some(pos) = self.buf_rings.iter().position(|s| s.bgid == bgid) {
            if self.buf_rings[pos].retiring() {
                self.retire_step(pos);
            }
        }
    }

    /// Retire what the owners gave up, then top every other buffer ring up, fairly: each
    /// to at most its entries and its share of its pool (the pool's slots divided among
    /// the live rings drawing on it, rounded up), one slot at a time to the neediest ring
    /// — fewest buffers offered, then served longest ago — so that rings short of slots
    /// take turns across refills.
    pub(super) fn replenish_buf_rings(&mut self) {
        if self.buf_rings.is_empty() {
            return;
        }
        let mut pos = 0;
        while pos < self.buf_rings.len() {
            if self.buf_rings[pos].retiring() && self.retire_step(pos) {
                continue; // swap_remove moved another ring to `pos`
            }
            pos += 1;
        }
        for i in 0..self.buf_rings.len() {
            let pool = self.buf_rings[i].pool.inner.id();
            let sharing = self
                .buf_rings
                .iter()
                .filter(|s| !s.retiring && s.pool.inner.id() == pool)
                .count()
                .max(1);
            let st = &mut self.buf_rings[i];
            let share = st.pool.geometry().slots.div_ceil(sharing);
            st.cap = if st.retiring {
                0
            } else {
                share.min(st.entries as usize)
            };
        }
        let mut tick = 0;
        for st in &mut self.buf_rings {
            st.dry = false;
            tick = tick.max(st.turn);
        }
        loop {
            let neediest = self
                .buf_rings
                .iter_mut()
                .filter(|st| st.offered < st.cap && !st.dry)
                .min_by_key(|st| (st.offered, st.turn));
            let Some(st) = neediest else {
                break;
            };
            if st.offer_one() {
                tick += 1;
                st.turn = tick;
            } else {
                st.dry = true;
            }
        }
        for st in &mut self.buf_rings {
            st.publish();
        }
    }

    pub(super) fn buf_ring_mut(&mut self, bgid: u16) -> Option<&mut BufRingState> {
        self.buf_rings.iter_mut().find(|s| s.bgid == bgid)
    }
}
