//! The arena, its slots and the lock-free free list.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crossbeam_utils::CachePadded;

use crate::sync::{
    current, park, park_timeout, Arc, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use crate::waiters::{deadline_after, spin, Waiters, Wakeup};

use super::magazine::{asym, Magazine, MAGAZINES, MAG_SLOTS};
use super::pooled::PoolBuf;

/// The kernel limits one registered buffer to 1 GiB; slots are registered in regions no
/// larger than this.
const MAX_REGION: usize = 1 << 30;

/// Largest data capacity of one slot: transfer lengths are `u32` in io_uring.
const MAX_SLOT_LEN: usize = 1 << 30;

/// Alignment every anonymous mapping has (the smallest page size); larger slot
/// alignments are obtained by offsetting the arena inside a slightly larger mapping.
const MMAP_ALIGN: usize = 4096;

/// A transparent huge page on x86-64 and aarch64 with 4 KiB pages (PMD size).
const HUGE_PAGE: usize = 2 << 20;

static NEXT_POOL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The free list: slot indices not in use. It has room for every slot, so a push of a
/// returned slot never fails.
type FreeList = crate::sync::ArrayQueue<u32>;

/// Builder for a [`BufferPool`]. Values are normalised in the setters (lengths rounded up
/// to the alignment) and validated in [`build`](PoolBuilder::build).
///
/// ```
/// let pool = iocomplete::BufferPool::builder()
///     .slots(8)
///     .slot_len(64 * 1024)
///     .header_len(16)
///     .build()?;
/// assert_eq!(pool.stats().total, 8);
/// assert_eq!(pool.geometry().capacity, 64 * 1024);
/// # Ok::<(), iocomplete::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    slots: usize,
    slot_len: usize,
    header_len: usize,
    trailer_len: usize,
    align: usize,
    huge_pages: bool,
    populate: bool,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            slots: 64,
            slot_len: 64 * 1024,
            header_len: 0,
            trailer_len: 0,
            align: 4096,
            huge_pages: false,
            populate: true,
        }
    }
}

impl PoolBuilder {
    /// Number of slots (default 64). Must be at least 1 and below 2^31, and the arena
    /// (slots × stride) must fit in memory.
    pub fn slots(mut self, n: usize) -> Self {
        self.slots = n;
        self
    }

    /// Data capacity of each slot in bytes (default 64 KiB; 1 byte to 1 GiB, the largest
    /// transfer io_uring takes in one piece); rounded up to the alignment.
    pub fn slot_len(mut self, len: usize) -> Self {
        self.slot_len = len;
        self
    }

    /// Bytes of header placed immediately before each slot's data (default 0; at most
    /// 1 GiB).
    pub fn header_len(mut self, len: usize) -> Self {
        self.header_len = len;
        self
    }

    /// Bytes of trailer room after each slot's data capacity (default 0; at most 1 GiB).
    pub fn trailer_len(mut self, len: usize) -> Self {
        self.trailer_len = len;
        self
    }

    /// Alignment of every slot's data area (default 4096, enough for O_DIRECT on any
    /// device). Must be a power of two, at most 2 MiB.
    pub fn align(mut self, align: usize) -> Self {
        self.align = align;
        self
    }

    /// Back the arena with 2 MiB huge pages (`MAP_HUGETLB`). Fails at `build()` when the
    /// system has no huge pages reserved.
    pub fn huge_pages(mut self, on: bool) -> Self {
        self.huge_pages = on;
        self
    }

    /// Pre-fault the arena at build (`MAP_POPULATE`, default on) so the first use of a
    /// slot takes no page fault.
    pub fn populate(mut self, on: bool) -> Self {
        self.populate = on;
        self
    }

    /// Map the arena and build the pool.
    pub fn build(self) -> Result<BufferPool> {
        if self.slots == 0 || self.slots >= (1 << 31) {
            return Err(Error::out_of_range("pool slots", 1, (1 << 31) - 1));
        }
        if !self.align.is_power_of_two() {
            return Err(Error::new(ErrorKind::NotPowerOfTwo {
                what: "pool alignment",
                value: self.align as u64,
            }));
        }
        if self.align > (1 << 21) {
            return Err(Error::out_of_range("pool alignment", 1, 1 << 21));
        }
        if self.slot_len == 0 || self.slot_len > MAX_SLOT_LEN {
            return Err(Error::out_of_range(
                "pool slot length",
                1,
                MAX_SLOT_LEN as u64,
            ));
        }
        if self.header_len > MAX_SLOT_LEN || self.trailer_len > MAX_SLOT_LEN {
            return Err(Error::out_of_range(
                "pool header/trailer length",
                0,
                MAX_SLOT_LEN as u64,
            ));
        }
        let align = self.align;
        let capacity = round_up(self.slot_len, align);
        let head_room = round_up(self.header_len, align);
        let stride = round_up(head_room + capacity + self.trailer_len, align);
        let arena_len = stride
            .checked_mul(self.slots)
            .ok_or(Error::invalid("pool arena size overflows"))?;
        let geometry = PoolGeometry {
            slots: self.slots,
            capacity,
            header_len: self.header_len,
            trailer_len: self.trailer_len,
            align,
            stride,
            head_room,
            arena_len,
        };
        PoolInner::new(geometry, self.huge_pages, self.populate).map(|inner| BufferPool {
            inner: Arc::new(inner),
        })
    }
}

/// Where things are inside a slot. All lengths in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Number of slots.
    pub slots: usize,
    /// Data capacity of a slot (a multiple of `align`).
    pub capacity: usize,
    /// Header bytes immediately before the data.
    pub header_len: usize,
    /// Trailer room after the data capacity.
    pub trailer_len: usize,
    /// Alignment of every slot's data area.
    pub align: usize,
    /// Distance between two consecutive slots.
    pub stride: usize,
    /// Offset of the data area from the slot start (header rounded up to `align`).
    pub head_room: usize,
    /// Size of the whole arena.
    pub arena_len: usize,
}

impl PoolGeometry {
    /// Slots per registered region (a region is at most 1 GiB, the kernel's limit for
    /// one fixed buffer).
    pub(crate) fn slots_per_region(&self) -> usize {
        (MAX_REGION / self.stride).max(1)
    }

    /// Number of fixed-buffer regions the arena registers as.
    pub(crate) fn regions(&self) -> usize {
        self.slots.div_ceil(self.slots_per_region())
    }
}

/// A snapshot of a pool's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Slots in the pool.
    pub total: usize,
    /// Free slots now: on the shared free list or cached in a thread's magazine (exact
    /// when no thread is getting or putting at the same moment).
    pub free: usize,
    /// Slots whose buffers the kernel owns now (submitted, completion not yet reaped).
    pub in_flight: usize,
}

/// Per-slot bookkeeping.
#[derive(Debug)]
pub(crate) struct SlotMeta {
    /// Number of live [`SharedBuf`](super::SharedBuf) clones of this slot. Zero while the
    /// slot is free or held by a unique `PoolBuf`. Only `SharedBuf` touches it.
    pub(crate) shared_refs: AtomicU32,
    /// Loom only: stands for the slot's bytes (the arena is invisible to loom), so models
    /// check that every access happens-before the next owner's (see `PoolInner::touch`).
    #[cfg(loom)]
    bytes: loom::cell::UnsafeCell<()>,
    /// Debug-build state tracker: 0 = free, 1 = checked out, 2 = in flight (kernel-owned). Asserted on every transition
    /// so a double return or a use-after-return panics in tests instead of corrupting data.
    state: AtomicU32,
}

const FREE: u32 = 0;
const CHECKED_OUT: u32 = 1;
const IN_FLIGHT: u32 = 2;

/// The shared core of a pool; handles, buffers and rings hold it through an `Arc`.
///
/// Lifetime (the arena must outlive every buffer): the `Arc`'s strong count is held by
/// each [`BufferPool`] handle, each ring that registered the arena, each live `SharedBuf`
/// clone, and one *credit* per slot that is off the shared free list — in a `PoolBuf`, in
/// the last `SharedBuf` of a slot, or cached in a magazine. A credit moves with its slot
/// without touching the count: a `PoolBuf` taken from a magazine adopts the slot's credit
/// as its `Arc`, and one returned to a magazine leaves its `Arc` there (forgotten). Only
/// moves between the shared list and the rest of the world change the count (one RMW
/// each, on the slow path). When the last handle drops, the pool is *orphaned*: every
/// magazine is emptied and its credits released, and any later return to a magazine
/// hands the magazine back at once (see `orphan`, `put`), so magazines never keep an
/// unreachable arena alive.
pub(crate) struct PoolInner {
    id: u64,
    geometry: PoolGeometry,
    /// Base address of the arena; valid for `geometry.arena_len` bytes while `_map` lives.
    base: NonNull<u8>,
    /// Owns the mapping; never accessed after construction except by its drop.
    _map: memmap2::MmapMut,
    free: FreeList,
    meta: Box<[SlotMeta]>,
    /// Slots owned by the kernel right now; maintained by the ring.
    in_flight: AtomicUsize,
    /// Gets waiting for a slot — blocking (`get`, `get_timeout`) and async (`GetBuf`)
    /// alike — oldest first. While one is queued, a returned slot goes straight to the
    /// oldest (see `put_to_shared`) and no slot is parked in a magazine (see `push_own`).
    waiters: Waiters<u32>,
    /// Per-thread caches of free slots (see `magazine`); slots in them count as free.
    mags: Box<[CachePadded<Magazine>]>,
    /// Most slots one magazine holds: `slots / (2 * MAGAZINES)`, at most `MAG_SLOTS`; 0
    /// (no magazines) for pools under 16 slots. All magazines together thus hold at most
    /// half the pool.
    mag_cap: usize,
    /// Live `BufferPool` handles (only they can take slots).
    handles: AtomicUsize,
    /// The last handle is gone: returns skip the magazines.
    orphaned: AtomicBool,
    /// Number of rings that have this arena registered as fixed buffers.
    registrations: AtomicU64,
}

// SAFETY: the raw `base` pointer is only dereferenced through `PoolBuf`/`SharedBuf`,
// whose ownership rules (one unique owner, or read-only shared clones) keep accesses to
// one slot from racing; everything else in `PoolInner` is `Sync` already.
unsafe impl Send for PoolInner {}
// SAFETY: as above; the free list, counters and condvar are thread-safe.
unsafe impl Sync for PoolInner {}

impl fmt::Debug for PoolInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolInner")
            .field("id", &self.id)
            .field("geometry", &self.geometry)
            .field("free", &self.free.len())
            .finish_non_exhaustive()
    }
}

impl PoolInner {
    fn new(geometry: PoolGeometry, huge: bool, populate: bool) -> Result<PoolInner> {
        // An arena of 2 MiB or more asks for transparent huge pages (best effort): a slot
        // then sits in physically contiguous memory, so a large O_DIRECT transfer from a
        // registered buffer is one request the device takes whole. On 4 KiB pages a 1 MiB
        // read spans 256 scattered pages, more segments than many queues take (a loop
        // device: 128): the block layer must split it, and a split of a non-blocking
        // (io_uring) read fails with EAGAIN, so io_uring retries every such read on an
        // io-wq worker thread. Huge pages also fault the arena in 512 times fewer steps.
        let thp = !huge && geometry.arena_len >= HUGE_PAGE;
        let align = if thp {
            geometry.align.max(HUGE_PAGE)
        } else {
            geometry.align
        };
        // mmap only guarantees page alignment: for a larger `align`, map `align` bytes more
        // and start the arena at the first aligned address inside the mapping.
        let slack = if align > MMAP_ALIGN { align } else { 0 };
        let mut opts = memmap2::MmapOptions::new();
        opts.len(geometry.arena_len + slack);
        if huge {
            opts.huge(Some(21));
        }
        // With THP the arena is populated after the advice (MAP_POPULATE would fault it in
        // on small pages first).
        if populate && !thp {
            opts.populate();
        }
        let mut map = opts.map_anon().map_err(|e| Error::from_io(&e))?;
        let start = map.as_mut_ptr();
        let skip = start.align_offset(align);
        if skip > slack {
            return Err(Error::invalid("cannot align the arena"));
        }
        if thp {
            // Advice only: THP disabled ("never") or no huge page free leaves small pages.
            let _ = map.advise_range(memmap2::Advice::HugePage, skip, geometry.arena_len);
            if populate
                && map
                    .advise_range(memmap2::Advice::PopulateWrite, skip, geometry.arena_len)
                    .is_err()
            {
                // No MADV_POPULATE_WRITE (Linux < 5.14): write one byte of every page.
                for b in map[skip..skip + geometry.arena_len]
                    .iter_mut()
                    .step_by(MMAP_ALIGN)
                {
                    *b = 0;
                }
            }
        }
        // SAFETY: `skip <= slack`, so `start + skip + arena_len` stays inside the mapping of
        // `arena_len + slack` bytes.
        let base = NonNull::new(unsafe { start.add(skip) }).ok_or(Error::invalid("empty arena"))?;
        let free = FreeList::new(geometry.slots);
        for i in 0..geometry.slots {
            // Cannot fail: the queue has room for every slot.
            let _ = free.push(i as u32);
        }
        let meta = (0..geometry.slots)
            .map(|_| SlotMeta {
                shared_refs: AtomicU32::new(0),
                #[cfg(loom)]
                bytes: loom::cell::UnsafeCell::new(()),
                state: AtomicU32::new(FREE),
            })
            .collect();
        // Loom models the magazine on its own (see `magazine`); pools under loom use the
        // shared list only, so the existing models keep their size.
        let mag_cap = if cfg!(loom) {
            0
        } else {
            (geometry.slots / (2 * MAGAZINES)).min(MAG_SLOTS)
        };
        if mag_cap > 0 {
            asym::init();
        }
        let mags = (0..if mag_cap > 0 { MAGAZINES } else { 0 })
            .map(|_| CachePadded::new(Magazine::new()))
            .collect();
        Ok(PoolInner {
            id: NEXT_POOL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            geometry,
            base,
            _map: map,
            free,
            meta,
            in_flight: AtomicUsize::new(0),
            waiters: Waiters::new(),
            mags,
            mag_cap,
            handles: AtomicUsize::new(1),
            orphaned: AtomicBool::new(false),
            registrations: AtomicU64::new(0),
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn geometry(&self) -> &PoolGeometry {
        &self.geometry
    }

    pub(crate) fn meta(&self, slot: u32) -> &SlotMeta {
        &self.meta[slot as usize]
    }

    /// Address of the first data byte of `slot`.
    pub(crate) fn data_ptr(&self, slot: u32) -> *mut u8 {
        debug_assert!((slot as usize) < self.geometry.slots);
        let off = slot as usize * self.geometry.stride + self.geometry.head_room;
        // SAFETY: `slot < slots`, so `off + capacity + trailer <= arena_len`: the result
        // stays inside the mapping that `base` points to.
        unsafe { self.base.as_ptr().add(off) }
    }

    /// Record an access to `slot`'s bytes for loom (a read, or a write if `write`); nothing
    /// outside loom.
    #[inline(always)]
    pub(crate) fn touch(&self, slot: u32, write: bool) {
        #[cfg(loom)]
        {
            let cell = &self.meta[slot as usize].bytes;
            if write {
                cell.with_mut(|_| ());
            } else {
                cell.with(|_| ());
            }
        }
        #[cfg(not(loom))]
        let _ = (slot, write);
    }

    /// The regions to register as fixed buffers: `(address, length)` pairs.
    pub(crate) fn regions(&self) -> impl Iterator<Item = (*mut u8, usize)> + '_ {
        let g = &self.geometry;
        let per = g.slots_per_region();
        (0..g.regions()).map(move |r| {
            let first = r * per;
            let n = per.min(g.slots - first);
            // SAFETY: `first < slots`, so the region start is inside the mapping.
            let addr = unsafe { self.base.as_ptr().add(first * g.stride) };
            (addr, n * g.stride)
        })
    }

    /// Index (relative to the pool's first region) of the fixed buffer covering `slot`.
    pub(crate) fn region_of(&self, slot: u32) -> u32 {
        (slot as usize / self.geometry.slots_per_region()) as u32
    }

    pub(crate) fn note_registered(&self, on: bool) {
        // Relaxed: an informational counter read by `stats`/`is_registered`; it orders
        // no other memory.
        if on {
            self.registrations.fetch_add(1, Ordering::Relaxed);
        } else {
            self.registrations.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The kernel takes (`on`) or gives back a buffer of this pool: the `in_flight`
    /// statistic, and for a unique buffer (`PoolBuf`) the debug-build state transition
    /// `CheckedOut <-> InFlight`, so that returning a slot while in flight trips an assert.
    /// (Shared buffers may be in flight several times at once; only counted.)
    pub(crate) fn set_in_flight(&self, slot: u32, on: bool, unique: bool) {
        // Relaxed: statistics only; the kernel's ownership of the slot is tracked by the
        // ring's op table, not by this counter.
        if on {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        match (unique, on) {
            (false, _) => {}
            (true, true) => self.mark(slot, CHECKED_OUT, IN_FLIGHT),
            (true, false) => self.mark(slot, IN_FLIGHT, CHECKED_OUT),
        }
    }

    /// Take a free slot, if any: from this thread's magazine, else the shared list, else
    /// another thread's magazine (so a slot parked there never makes the pool look empty).
    ///
    /// Returns the slot with its credit (see the type's docs): the caller's buffer adopts it
    /// as its `Arc` (`PoolBuf::adopt`).
    #[inline]
    pub(crate) fn try_take(this: &Arc<Self>) -> Option<u32> {
        let slot = match PoolInner::from_magazine(this) {
            Some(slot) => slot,
            None => PoolInner::take_shared(this)?,
        };
        this.mark(slot, FREE, CHECKED_OUT);
        Some(slot)
    }

    /// `try_take` past this thread's magazine: the shared list, then stealing.
    #[cold]
    fn take_shared(this: &Arc<Self>) -> Option<u32> {
        match this.free.pop() {
            Some(slot) => {
                // Off the shared list: the slot gets its credit now.
                PoolInner::credit(this, 1);
                Some(slot)
            }
            // A stolen slot carries its magazine credit.
            None => this.steal(),
        }
    }

    /// Steal a slot (with its credit) from any magazine.
    fn steal(&self) -> Option<u32> {
        // `len` first: a Relaxed look that skips the heavy fence of `steal` for magazines
        // that look empty (a slot pushed this instant is found on the next try).
        self.mags
            .iter()
            .filter(|m| m.len() > 0)
            .find_map(|m| m.steal())
    }

    /// Add `n` slot credits (slots leaving the shared list). Relaxed increment, as
    /// `Arc::clone`: the caller holds a strong reference already.
    fn credit(this: &Arc<Self>, n: usize) {
        for _ in 0..n {
            // SAFETY: the pointer comes from a live `Arc` (`this`).
            unsafe { Arc::increment_strong_count(Arc::as_ptr(this)) };
        }
    }

    /// Release `n` slot credits. The caller must hold a strong reference of its own while
    /// calling (so this never frees the pool under it), or call it last on `ptr`.
    fn uncredit(&self, n: usize) {
        let ptr: *const PoolInner = self;
        for _ in 0..n {
            // SAFETY: each credit is one strong count of this pool's `Arc`, taken in
            // `credit` (or carried by a buffer's `Arc`) and released exactly once, here.
            unsafe { Arc::decrement_strong_count(ptr) };
        }
    }

    #[inline]
    fn from_magazine(this: &Arc<Self>) -> Option<u32> {
        if this.mag_cap == 0 {
            return None;
        }
        with_magazine(this, |m| {
            if m.len() == 1 {
                PoolInner::refill(this, m);
            }
            m.pop()
        })
        .flatten()
    }

    /// Taking the last slot of a magazine races thieves (the owner must CAS `top`);
    /// topping it up from the shared list first keeps a get/put loop on one thread off
    /// that path: it pops with a compiler fence and no atomic read-modify-write.
    ///
    /// Through `push_own`, like a return: a slot must not move into a magazine while a
    /// get waits (it could stay there, out of the waiter's reach, if this thread idles).
    #[cold]
    fn refill(this: &Arc<Self>, m: &Magazine) {
        // Relaxed `has_waiters`: a hint; `push_own` decides.
        while m.len() < this.mag_cap && !this.waiters.has_waiters() {
            let Some(slot) = this.free.pop() else { break };
            // Credit first: once pushed, a thief may adopt the slot's credit.
            PoolInner::credit(this, 1);
            if !this.push_own(m, slot) {
                this.put_shared(slot);
                PoolInner::publish(this);
                // `this` is a strong reference of the caller's: this releases no pool.
                this.uncredit(1);
                break;
            }
        }
    }

    /// Return a slot. To this thread's magazine while it has room and nobody waits for a
    /// slot: then the slot's credit stays with it and this returns `true` (the caller
    /// forgets its `Arc`). Otherwise to the oldest waiting get, or to the shared free list,
    /// and `false` (the caller drops its `Arc`, releasing the credit).
    ///
    /// After `true` the pool may already be freed (an orphaned pool's last slot): the
    /// caller must not touch it again.
    #[inline]
    pub(crate) fn put(this: &Arc<Self>, slot: u32) -> bool {
        this.mark(slot, CHECKED_OUT, FREE);
        // Relaxed `has_waiters`: a fast hint that spares the magazine's protocol while a
        // get waits; `push_own` checks again where it counts, after its fence.
        if this.mag_cap > 0
            && !this.waiters.has_waiters()
            && with_magazine(this, |m| this.push_own(m, slot)) == Some(true)
        {
            return true;
        }
        PoolInner::put_to_shared(this, slot)
    }

    /// `put` past this thread's magazine: hand the slot to the oldest waiting get, if one
    /// is queued, else push it onto the shared list (and serve a get that registered
    /// meanwhile: the handshake's publishing half).
    ///
    /// The hand-off gives the slot a fresh credit (the waiter's `PoolBuf` adopts it) and
    /// returns `false`, so the caller's own `Arc` keeps the pool alive until the waiter
    /// has been woken and then releases the returned slot's old credit.
    #[cold]
    fn put_to_shared(this: &Arc<Self>, slot: u32) -> bool {
        // Relaxed `has_waiters`: a hint. A waiter missed here (it registers just now) is
        // served by the handshake below, from the shared list.
        if this.waiters.has_waiters() {
            let mut slot = Some(slot);
            let served = this.waiters.serve(|| {
                let s = slot.take()?;
                PoolInner::credit(this, 1);
                this.mark(s, FREE, CHECKED_OUT);
                Some(s)
            });
            if let Some(wake) = served {
                wake.wake();
                return false;
            }
            // The queue emptied meanwhile: the slot is still ours.
            let Some(s) = slot else { return false };
            this.put_shared(s);
        } else {
            this.put_shared(slot);
        }
        PoolInner::publish(this);
        false
    }

    /// After pushing slots onto the shared list: if a get registered meanwhile, serve it
    /// from the list (the fence in `must_serve` pairs with the one in `Waiters::register`;
    /// see there).
    #[inline]
    fn publish(this: &Arc<Self>) {
        if this.waiters.must_serve() {
            PoolInner::serve_waiters(this, false);
        }
    }

    /// Serve queued gets, oldest first, while slots are to be had: from the shared list,
    /// and (`scan`, for a waiter that just registered) from every magazine.
    fn serve_waiters(this: &Arc<Self>, scan: bool) {
        while let Some(wake) = this
            .waiters
            .serve(|| PoolInner::take_for_waiter(this, scan))
        {
            wake.wake();
        }
    }

    /// A free slot with its credit, for a waiter (under the waiters' lock): the shared
    /// list, then, if `scan`, the magazines.
    ///
    /// The scan is the registering half of the magazine handshake (see `push_own`): the
    /// caller has registered and issued the heavy fence, so a return that did not see the
    /// registration is either visible here or still inside its `busy` window, which
    /// `wait_idle` waits out; after the Acquire of `busy` cleared, the Relaxed `len`
    /// sees the push (the owner's `bottom` store happens-before its Release clear).
    fn take_for_waiter(this: &Arc<Self>, scan: bool) -> Option<u32> {
        let slot = match this.free.pop() {
            Some(slot) => {
                // Off the shared list: the slot gets its credit now.
                PoolInner::credit(this, 1);
                slot
            }
            // A stolen slot carries its magazine credit.
            None if scan => this.mags.iter().find_map(|m| {
                m.wait_idle();
                if m.len() > 0 {
                    m.steal()
                } else {
                    None
                }
            })?,
            None => return None,
        };
        this.mark(slot, FREE, CHECKED_OUT);
        Some(slot)
    }

    /// Queue a waiting get (woken through `wake`) and serve the queue from whatever is
    /// free now — the registering half of both handshakes: the shared list's (the fence
    /// in `Waiters::register`) and the magazines' (the heavy fence here, the other half of
    /// the light one in `push_own`). Returns the waiter's key; it may be served already.
    fn register(this: &Arc<Self>, wake: Wakeup) -> usize {
        let key = this.waiters.register(wake);
        if this.mag_cap > 0 {
            asym::heavy("pool.register");
        }
        PoolInner::serve_waiters(this, true);
        key
    }

    /// Push into this thread's magazine `m`; `false` if it is full, the pool is orphaned or
    /// a get waits (the slot and its credit stay the caller's).
    ///
    /// The same fence pair keeps a slot from being parked out of a waiter's reach: a get
    /// registers (`waiters`), issues the heavy fence, then waits out each magazine's
    /// `busy` window and steals (see `take_for_waiter`). Either the load of `waiters`
    /// here sees the registration (and the slot goes to the waiter instead), or the
    /// waiter sees this push.
    ///
    /// Once pushed, the slot's credit may be taken by a thief or by `orphan`, and the pool
    /// freed by whoever releases the last strong count — so the push must be this
    /// thread's last access to the pool. The `busy` flag makes it so: announced before
    /// the check of `orphaned` (the fence pair with `orphan`: either this load sees
    /// `orphaned`, or `orphan` sees `busy` and waits), cleared as the last access.
    /// While `orphaned` is unset here, the last handle's strong reference outlives the
    /// whole window (it waits in `orphan` first).
    #[inline]
    fn push_own(&self, m: &Magazine, slot: u32) -> bool {
        m.set_busy(true);
        asym::light("pool.put");
        // Relaxed loads: ordered by the fence pairs above.
        let kept = !self.orphaned.load(Ordering::Relaxed)
            && !self.waiters.has_waiters()
            && m.push(slot, self.mag_cap);
        m.set_busy(false);
        kept
    }

    /// The last handle is gone: no slot will be taken again, so empty every magazine
    /// (their owners may be idle forever) and release their credits. No get waits (each
    /// holds a handle), so the slots go to the shared list with nobody to serve.
    fn orphan(&self) {
        if self.mag_cap == 0 {
            return;
        }
        // Relaxed store + heavy fence: see `push_own`.
        self.orphaned.store(true, Ordering::Relaxed);
        asym::heavy("pool.orphan");
        let mut n = 0;
        for m in self.mags.iter() {
            // An owner that missed `orphaned` (the fence pair) is seen busy here: wait for
            // its push to finish, so that the steal below finds it and the owner no
            // longer touches the pool once we release the credits.
            m.wait_idle();
            while let Some(slot) = m.steal() {
                self.put_shared(slot);
                n += 1;
            }
        }
        // The caller (the last handle) still holds its own strong reference.
        self.uncredit(n);
    }

    fn put_shared(&self, slot: u32) {
        if self.free.push(slot).is_err() {
            // Unreachable by construction: the queue holds every slot and `mark` rejects a
            // double return. Losing a slot is better than panicking in a destructor.
            debug_assert!(false, "free list overflow: slot {slot} returned twice");
        }
    }

    /// Empty magazine `i` (owned by the caller) onto the shared list, serving waiting
    /// gets, release its credits and give it up. The caller holds a strong reference.
    #[cfg(not(loom))]
    fn hand_back(this: &Arc<Self>, i: usize) {
        let m = &this.mags[i];
        let mut n = 0;
        while let Some(slot) = m.pop() {
            this.put_shared(slot);
            n += 1;
        }
        m.release();
        if n > 0 {
            PoolInner::publish(this);
        }
        this.uncredit(n);
    }

    /// Take a slot, waiting up to `timeout` (forever if `None`) for one to be returned.
    ///
    /// Spins briefly (a returning thread mid-burst refills within microseconds, far sooner
    /// than a futex round trip), then queues behind the gets already waiting and parks
    /// until served: returned slots go to the waiters oldest first (see `Waiters`).
    ///
    /// It parks the thread (`std::thread::park`, as `std::sync::mpsc` does). An unpark
    /// meant for other code on this thread (a park-based executor's waker) may arrive
    /// while we wait and be consumed here: on the way out, a thread that parked unparks
    /// itself, handing such a token on — its next `park` returns at once, which `park`'s
    /// contract allows (spurious wake-ups), instead of sleeping through a wake-up.
    pub(crate) fn take_wait(this: &Arc<Self>, timeout: Option<Duration>) -> Option<u32> {
        let (slot, parked) = Self::take_parked(this, timeout);
        if parked {
            current().unpark();
        }
        slot
    }

    /// [`take_wait`](Self::take_wait): the slot, and whether the thread parked.
    fn take_parked(this: &Arc<Self>, timeout: Option<Duration>) -> (Option<u32>, bool) {
        let deadline = timeout.and_then(deadline_after);
        if let Some(slot) = spin(&mut || PoolInner::try_take(this)) {
            return (Some(slot), false);
        }
        // Under loom, where `spin` does nothing, one try stands for it.
        #[cfg(loom)]
        if let Some(slot) = PoolInner::try_take(this) {
            return (Some(slot), false);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return (None, false);
        }
        let key = PoolInner::register(this, Wakeup::Thread(current()));
        let mut parked = false;
        loop {
            if let Some(slot) = this.waiters.poll(key, None) {
                return (Some(slot), parked);
            }
            parked = true;
            match deadline {
                None => park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        // Served at the last moment: keep it, rather than pass it on.
                        return (this.waiters.cancel(key), parked);
                    }
                    park_timeout(d - now);
                }
            }
        }
    }

    fn mark(&self, slot: u32, from: u32, to: u32) {
        if cfg!(debug_assertions) {
            // Relaxed: a debug tracker; the free list's own synchronization orders the
            // slot's memory.
            let prev = self.meta[slot as usize].state.swap(to, Ordering::Relaxed);
            assert_eq!(prev, from, "slot {slot}: bad transition {prev} -> {to}");
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let cached: usize = self.mags.iter().map(|m| m.len()).sum();
        PoolStats {
            total: self.geometry.slots,
            free: (self.free.len() + cached).min(self.geometry.slots),
            // Relaxed: a snapshot for reporting.
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// Entries in a thread's magazine cache: the pools one thread uses at once with a
/// magazine each. A fifth pool evicts one (round robin), handing its slots back.
#[cfg(not(loom))]
const CACHE_ENTRIES: usize = 4;

/// One thread's claim on one pool's magazine.
#[cfg(not(loom))]
struct CacheEntry {
    /// The pool. Weak: the entry keeps no arena alive, and holding the allocation keeps
    /// `Weak::as_ptr` from being reused by another pool, so the address is a safe key.
    pool: std::sync::Weak<PoolInner>,
    /// `Weak::as_ptr(&pool)`, the lookup key.
    key: *const PoolInner,
    /// Index of the claimed magazine in `pool.mags`, or `None` if all were taken when this
    /// thread first used the pool (it then uses the shared list only).
    mag: Option<usize>,
}

#[cfg(not(loom))]
impl CacheEntry {
    /// Hand the magazine back to its pool, if the pool still exists.
    fn hand_back(self) {
        if let (Some(i), Some(pool)) = (self.mag, self.pool.upgrade()) {
            PoolInner::hand_back(&pool, i);
        }
    }
}

/// A thread's magazine claims; dropped (handing every magazine back) at thread exit.
#[cfg(not(loom))]
struct Cache {
    entries: [Option<CacheEntry>; CACHE_ENTRIES],
    victim: usize,
}

#[cfg(not(loom))]
impl Drop for Cache {
    fn drop(&mut self) {
        // `HOT` outlives `CACHE` (no destructor): clear it before handing back, so a buffer
        // dropped later in this thread's exit goes to the shared list.
        HOT.with(|h| h.set((std::ptr::null(), std::ptr::null())));
        for e in self.entries.iter_mut().filter_map(Option::take) {
            e.hand_back();
        }
    }
}

#[cfg(not(loom))]
std::thread_local! {
    static CACHE: std::cell::RefCell<Cache> = const {
        std::cell::RefCell::new(Cache { entries: [None, None, None, None], victim: 0 })
    };
}

#[cfg(not(loom))]
std::thread_local! {
    /// The most recently used entry of `CACHE`: the pool's address and its magazine. No
    /// destructor, so reading it costs one thread-relative load and it stays readable
    /// while `CACHE` is being destroyed. Invariant: when set, `CACHE` holds an entry for
    /// this pool with this magazine (whose `Weak` keeps the address from being reused);
    /// whoever removes that entry clears this first.
    static HOT: std::cell::Cell<(*const PoolInner, *const Magazine)> =
        const { std::cell::Cell::new((std::ptr::null(), std::ptr::null())) };
}

/// Run `f` on this thread's magazine of `pool`, claiming one on first use. `None` when
/// the thread has none (all taken, or thread-local storage already torn down at thread
/// exit): the caller uses the shared list.
#[cfg(not(loom))]
#[inline(always)]
fn with_magazine<R>(pool: &Arc<PoolInner>, f: impl FnOnce(&Magazine) -> R) -> Option<R> {
    let key = Arc::as_ptr(pool);
    let (hot, mag) = HOT.with(|h| h.get());
    if hot == key {
        // SAFETY: `HOT`'s invariant: this thread owns this magazine of `pool`, which the
        // caller keeps alive (`pool` is a strong reference) for the duration of the call.
        return Some(f(unsafe { &*mag }));
    }
    with_magazine_slow(pool, f)
}

#[cfg(not(loom))]
#[cold]
fn with_magazine_slow<R>(pool: &Arc<PoolInner>, f: impl FnOnce(&Magazine) -> R) -> Option<R> {
    let key = Arc::as_ptr(pool);
    CACHE
        .try_with(|c| {
            let mut c = c.try_borrow_mut().ok()?;
            let found = c
                .entries
                .iter()
                .flatten()
                .find(|e| e.key == key)
                .map(|e| e.mag);
            let mag = match found {
                Some(m) => m,
                None => claim(&mut c, pool),
            }?;
            let m: &Magazine = &pool.mags[mag];
            HOT.with(|h| h.set((key, m)));
            Some(f(m))
        })
        .ok()
        .flatten()
}

#[cfg(loom)]
fn with_magazine<R>(_: &Arc<PoolInner>, _: impl FnOnce(&Magazine) -> R) -> Option<R> {
    None
}

/// Forget the hot entry if it is `key`'s (its `CACHE` entry is going away).
#[cfg(not(loom))]
fn clear_hot(key: *const PoolInner) {
    HOT.with(|h| {
        if h.get().0 == key {
            h.set((std::ptr::null(), std::ptr::null()));
        }
    });
}

/// First use of `pool` on this thread: claim a free magazine and record it, evicting an
/// entry if the cache is full.
#[cfg(not(loom))]
#[cold]
fn claim(c: &mut Cache, pool: &Arc<PoolInner>) -> Option<usize> {
    let mag = pool.mags.iter().position(|m| m.claim());
    let i = match c.entries.iter().position(Option::is_none) {
        Some(i) => i,
        None => {
            let i = c.victim;
            c.victim = (i + 1) % CACHE_ENTRIES;
            if let Some(old) = c.entries[i].take() {
                clear_hot(old.key);
                old.hand_back();
            }
            i
        }
    };
    c.entries[i] = Some(CacheEntry {
        pool: Arc::downgrade(pool),
        key: Arc::as_ptr(pool),
        mag,
    });
    mag
}

/// A pool of aligned, header-offset buffers in one arena. Cheap to clone (an `Arc`).
///
/// ```
/// use iocomplete::BufferPool;
/// let pool = BufferPool::builder().slots(2).slot_len(4096).header_len(8).build()?;
/// let mut buf = pool.try_get()?;
/// buf.header_mut().copy_from_slice(b"HDR:0001");
/// buf.extend_from_slice(b"payload")?;
/// assert_eq!(buf.frame(), b"HDR:0001payload");
/// drop(buf); // the slot is back
/// assert_eq!(pool.stats().free, 2);
/// # Ok::<(), iocomplete::Error>(())
/// ```
pub struct BufferPool {
    pub(crate) inner: Arc<PoolInner>,
}

impl Clone for BufferPool {
    fn clone(&self) -> Self {
        // Relaxed: as `Arc::clone`; a handle is made from a live one.
        self.inner.handles.fetch_add(1, Ordering::Relaxed);
        BufferPool {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // AcqRel: the last handle's `orphan` comes after every other handle's gets.
        if self.inner.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.orphan();
        }
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("geometry", &self.inner.geometry)
            .field("stats", &self.stats())
            .finish()
    }
}

impl BufferPool {
    /// A builder with the defaults (64 slots of 64 KiB, no header, 4 KiB alignment).
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Take a free buffer without waiting; [`ErrorKind::PoolExhausted`] if none is free.
    #[inline]
    pub fn try_get(&self) -> Result<PoolBuf> {
        match PoolInner::try_take(&self.inner) {
            Some(slot) => Ok(PoolBuf::adopt(&self.inner, slot)),
            None => Err(Error::new(ErrorKind::PoolExhausted)),
        }
    }

    /// Take a buffer, waiting up to `timeout` for one to be returned (by any thread).
    /// A `timeout` too large to add to the current instant (e.g. `Duration::MAX`) waits
    /// forever.
    ///
    /// A waiting get queues behind the gets already waiting, blocking and
    /// [async](Self::get_async) alike, and is served in that order (see
    /// [`get_async`](Self::get_async) for the guarantees).
    pub fn get_timeout(&self, timeout: Duration) -> Result<PoolBuf> {
        match PoolInner::take_wait(&self.inner, Some(timeout)) {
            Some(slot) => Ok(PoolBuf::adopt(&self.inner, slot)),
            None => Err(Error::new(ErrorKind::PoolExhausted)),
        }
    }

    /// Take a buffer, waiting as long as it takes for one to be returned (in line with the
    /// other waiting gets, as [`get_timeout`](Self::get_timeout)). Waits forever if no
    /// buffer ever comes back (all held, or leaked).
    pub fn get(&self) -> PoolBuf {
        loop {
            if let Some(slot) = PoolInner::take_wait(&self.inner, None) {
                return PoolBuf::adopt(&self.inner, slot);
            }
        }
    }

    /// Take a buffer without blocking a thread: a future that resolves to a [`PoolBuf`]
    /// as soon as one is free. It works on any executor (it uses only `std`'s
    /// [`Waker`](std::task::Waker)) and owns a handle of the pool, so it is `'static` and
    /// `Send` (for `spawn`), and the pool lives at least as long as it.
    ///
    /// - **Fast path:** a buffer free at the first poll is returned by that poll; nothing
    ///   is registered or allocated (creating the future clones the handle: two atomic
    ///   increments).
    /// - **Waiting:** otherwise the future queues behind the gets already waiting —
    ///   [`get`](Self::get)/[`get_timeout`](Self::get_timeout) callers and other futures
    ///   alike — and is woken once, when a buffer has been *handed* to it: a returned
    ///   buffer goes straight to the oldest waiter, never to the shared list while anyone
    ///   waits, so the woken future cannot lose it to a later waiter or to
    ///   [`try_get`](Self::try_get). No spinning, no periodic wake-ups. Registering
    ///   allocates only when the wait queue grows past its largest size so far (and if
    ///   the executor's `Waker::clone` allocates).
    /// - **Fairness:** waiters are served in the order they registered (a future at its
    ///   first pending poll, a blocking get after a brief spin), so none starves while
    ///   buffers come back: the `n`th waiter in line is served by the `n`th buffer
    ///   returned after it registered, at the latest. Only a get that has not registered
    ///   (`try_get`, a first poll, a blocking get's spin) can take a free buffer ahead of
    ///   the line, and while anyone waits a buffer is free only for the moment before a
    ///   registration serves it to the line.
    /// - **Cancel-safe:** dropping the future at any point loses nothing: before it was
    ///   served it leaves the queue (its waker dropped unused); after a buffer was handed to
    ///   it but before it was polled, the buffer goes back to the pool — to the next waiter,
    ///   if any. An executor's timeout around it is thus the async
    ///   [`get_timeout`](Self::get_timeout).
    /// - **No buffer ever returned:** as with [`get`](Self::get), the future stays pending
    ///   for as long as every buffer is held (or leaked). It cannot outlive the pool: it
    ///   holds a handle, so dropping every other handle does not end the pool.
    ///
    /// Polling the future again after it resolved takes another buffer.
    ///
    /// ```
    /// use std::future::Future;
    /// use std::pin::pin;
    /// use std::sync::Arc;
    /// use std::task::{Context, Poll, Wake, Waker};
    ///
    /// /// A minimal executor: poll on this thread, park between polls.
    /// fn block_on<F: Future>(fut: F) -> F::Output {
    ///     struct Unpark(std::thread::Thread);
    ///     impl Wake for Unpark {
    ///         fn wake(self: Arc<Self>) {
    ///             self.0.unpark();
    ///         }
    ///     }
    ///     let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    ///     let mut cx = Context::from_waker(&waker);
    ///     let mut fut = pin!(fut);
    ///     loop {
    ///         if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
    ///             return v;
    ///         }
    ///         std::thread::park();
    ///     }
    /// }
    ///
    /// let pool = iocomplete::BufferPool::builder().slots(1).slot_len(4096).build()?;
    /// let held = pool.try_get()?;
    /// let next = pool.get_async(); // 'static: could be spawned on any executor
    /// let returner = std::thread::spawn(move || drop(held));
    /// let mut buf = block_on(next); // woken when `held` comes back
    /// buf.extend_from_slice(b"hello")?;
    /// returner.join().unwrap();
    /// drop(buf);
    /// assert_eq!(pool.stats().free, 1);
    /// # Ok::<(), iocomplete::Error>(())
    /// ```
    pub fn get_async(&self) -> GetBuf {
        GetBuf {
            pool: self.clone(),
            key: None,
        }
    }

    /// Counters: total, free, in flight (owned by the kernel).
    pub fn stats(&self) -> PoolStats {
        self.inner.stats()
    }

    /// Slot layout.
    pub fn geometry(&self) -> PoolGeometry {
        self.inner.geometry
    }

    /// Whether at least one ring has this arena registered as fixed buffers.
    pub fn is_registered(&self) -> bool {
        // Relaxed: informational.
        self.inner.registrations.load(Ordering::Relaxed) > 0
    }

    /// Whether two handles are the same pool.
    pub fn same_pool(&self, other: &BufferPool) -> bool {
        self.inner.id == other.inner.id
    }
}

/// The future of [`BufferPool::get_async`]: resolves to a [`PoolBuf`] when a buffer is
/// free. Dropping it before then cancels the wait and loses nothing (see there).
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct GetBuf {
    /// A handle: keeps the pool (and its ability to hand out slots) alive while we wait.
    pool: BufferPool,
    /// Our entry in the pool's wait queue, once registered (`None` before the first
    /// poll that found no slot, and again after the one that took it).
    key: Option<usize>,
}

impl Future for GetBuf {
    type Output = PoolBuf;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PoolBuf> {
        let this = self.get_mut();
        let inner = &this.pool.inner;
        let key = match this.key {
            Some(key) => key,
            None => {
                if let Some(slot) = PoolInner::try_take(inner) {
                    return Poll::Ready(PoolBuf::adopt(inner, slot));
                }
                let key = PoolInner::register(inner, Wakeup::Task(cx.waker().clone()));
                this.key = Some(key);
                key
            }
        };
        match inner.waiters.poll(key, Some(cx.waker())) {
            Some(slot) => {
                this.key = None;
                Poll::Ready(PoolBuf::adopt(inner, slot))
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for GetBuf {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            if let Some(slot) = self.pool.inner.waiters.cancel(key) {
                // Served, never claimed: return it (to the next waiter, if any). Before
                // our handle goes (the fields drop after this).
                drop(PoolBuf::adopt(&self.pool.inner, slot));
            }
        }
    }
}

pub(crate) const fn round_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;
