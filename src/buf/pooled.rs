//! `PoolBuf` (unique) and `SharedBuf` (refcounted, read-only) handles to pool slots.

use std::fmt;
use std::mem::ManuallyDrop;

use crate::error::{Error, ErrorKind, Result};
use crate::sync::{fence, Arc, Ordering};

use super::pool::PoolInner;

/// A unique handle to one pool slot: a header of fixed length, then `len()` bytes of data
/// (the bytes transferred, never counting the header), then spare capacity.
///
/// Dropping it returns the slot to its pool at once (lock-free, from any thread). Keeping
/// it — moving it into a struct, sending it to another thread — extends the buffer's life:
/// ownership *is* the reference the driver frameworks take and release by hand.
///
/// Invariant: `len <= capacity`; the header is exactly `header_len` bytes and ends where
/// the data starts.
///
/// ```
/// # let pool = iocomplete::BufferPool::builder().slots(1).slot_len(4096).header_len(4).build()?;
/// let mut buf = pool.try_get()?;
/// buf.extend_from_slice(b"abc")?;
/// buf.header_mut().copy_from_slice(&3u32.to_le_bytes());
/// assert_eq!(buf.len(), 3);
/// assert_eq!(buf.frame(), &[3, 0, 0, 0, b'a', b'b', b'c']);
/// # Ok::<(), iocomplete::Error>(())
/// ```
pub struct PoolBuf {
    /// The slot's credit on its pool (see `PoolInner`): adopted from the pool in `adopt`,
    /// left with the slot or released in `drop`.
    pool: ManuallyDrop<Arc<PoolInner>>,
    slot: u32,
    len: u32,
}

impl PoolBuf {
    /// Wrap `slot`, just taken by `PoolInner::try_take`, adopting its credit as this
    /// buffer's `Arc` (no reference-count change).
    #[inline]
    pub(crate) fn adopt(pool: &Arc<PoolInner>, slot: u32) -> PoolBuf {
        // SAFETY: `try_take` handed us the slot with one strong count of `pool` that no one
        // else owns (its credit); `from_raw` takes ownership of exactly that count.
        let pool = unsafe { Arc::from_raw(Arc::as_ptr(pool)) };
        PoolBuf {
            pool: ManuallyDrop::new(pool),
            slot,
            len: 0,
        }
    }

    /// Bytes of data held (transferred), not counting the header.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when no data is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Data capacity of the slot.
    pub fn capacity(&self) -> usize {
        self.pool.geometry().capacity
    }

    /// Header length of the pool.
    pub fn header_len(&self) -> usize {
        self.pool.geometry().header_len
    }

    /// The slot's index in its pool.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Set the number of valid data bytes.
    ///
    /// This only moves the length; the bytes up to `len` are whatever the slot holds (a
    /// previous transfer's data, or zeroes from the fresh mapping), never uninitialised
    /// memory. Fails with [`ErrorKind::BufferTooSmall`] past the capacity.
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len > self.capacity() {
            return Err(Error::new(ErrorKind::BufferTooSmall {
                need: len as u64,
                have: self.capacity() as u64,
            }));
        }
        self.len = len as u32;
        Ok(())
    }

    /// Empty the data (the header is left as it is).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Append bytes to the data (a copy; for building writes and tests).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> Result<()> {
        let start = self.len();
        let end = start
            .checked_add(bytes.len())
            .ok_or(Error::new(ErrorKind::BufferTooSmall {
                need: u64::MAX,
                have: self.capacity() as u64,
            }))?;
        self.set_len(end)?;
        self.data_mut()[start..].copy_from_slice(bytes);
        Ok(())
    }

    /// The header: exactly `header_len` bytes immediately before the data.
    pub fn header(&self) -> &[u8] {
        let h = self.header_len();
        // SAFETY: the header lies inside this slot's head room (`head_room >= header_len`)
        // and this unique handle owns the slot; the shared borrow of `self` prevents a
        // concurrent `&mut`.
        unsafe { std::slice::from_raw_parts(self.data_ptr().sub(h), h) }
    }

    /// The header, writable.
    pub fn header_mut(&mut self) -> &mut [u8] {
        let h = self.header_len();
        // SAFETY: as `header`, with `&mut self` guaranteeing exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.data_mut_ptr().sub(h), h) }
    }

    /// The data: the `len()` bytes transferred.
    pub fn data(&self) -> &[u8] {
        // SAFETY: `len <= capacity` (type invariant) and the data area is inside the slot,
        // which this unique handle owns.
        unsafe { std::slice::from_raw_parts(self.data_ptr(), self.len()) }
    }

    /// The data, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.pool.touch(self.slot, true);
        // SAFETY: as `data`, with `&mut self` guaranteeing exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.data_mut_ptr(), self.len()) }
    }

    /// The whole data capacity, writable (to fill before `set_len`).
    pub fn capacity_mut(&mut self) -> &mut [u8] {
        self.pool.touch(self.slot, true);
        let cap = self.capacity();
        // SAFETY: the data area is `capacity` bytes inside the slot; exclusive via `&mut`.
        unsafe { std::slice::from_raw_parts_mut(self.data_mut_ptr(), cap) }
    }

    /// Header and data as one contiguous slice, ready to forward without a copy.
    pub fn frame(&self) -> &[u8] {
        let h = self.header_len();
        // SAFETY: header and data are adjacent inside the slot (see `header`, `data`).
        unsafe { std::slice::from_raw_parts(self.data_ptr().sub(h), h + self.len()) }
    }

    /// The trailer room after the data capacity (`trailer_len` bytes).
    pub fn trailer_mut(&mut self) -> &mut [u8] {
        let g = *self.pool.geometry();
        // SAFETY: the trailer room follows the data capacity inside the slot's stride;
        // exclusive via `&mut`.
        unsafe {
            std::slice::from_raw_parts_mut(self.data_mut_ptr().add(g.capacity), g.trailer_len)
        }
    }

    /// Address of the first data byte (for alignment checks and the ring).
    pub fn data_ptr(&self) -> *const u8 {
        self.pool.data_ptr(self.slot)
    }

    pub(crate) fn data_mut_ptr(&mut self) -> *mut u8 {
        self.pool.data_ptr(self.slot)
    }

    pub(crate) fn pool(&self) -> &Arc<PoolInner> {
        &self.pool
    }

    /// Record a completed transfer of `n` bytes into the data area.
    pub(crate) fn set_transferred(&mut self, n: usize) {
        debug_assert!(n <= self.capacity());
        self.len = n.min(self.capacity()) as u32;
    }

    /// Turn this buffer into a clonable, read-only [`SharedBuf`]. No allocation: the
    /// reference count lives in the pool's slot table.
    pub fn share(self) -> SharedBuf {
        let this = ManuallyDrop::new(self);
        // Relaxed: this handle is unique, so no other thread can observe the count until
        // the `SharedBuf` is sent somewhere, which synchronizes by itself.
        this.pool
            .meta(this.slot)
            .shared_refs
            .store(1, Ordering::Relaxed);
        SharedBuf {
            // SAFETY: `this` is never dropped, so the `Arc` is moved out exactly once.
            pool: unsafe { std::ptr::read(&this.pool) },
            slot: this.slot,
            len: this.len,
        }
    }

    /// Whether `self` belongs to `pool`.
    pub fn is_from(&self, pool: &super::BufferPool) -> bool {
        self.pool.id() == pool.inner.id()
    }
}

impl Drop for PoolBuf {
    #[inline]
    fn drop(&mut self) {
        if !PoolInner::put(&self.pool, self.slot) {
            // SAFETY: dropped once, here; the slot went to the shared list, so its credit
            // (this `Arc`) is released. (On `true` the credit stays with the slot in a
            // magazine and the `Arc` is left undropped — the pool may even be gone.)
            unsafe { ManuallyDrop::drop(&mut self.pool) };
        }
    }
}

impl fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuf")
            .field("slot", &self.slot)
            .field("len", &self.len)
            .field("header_len", &self.header_len())
            .finish()
    }
}

/// A read-only, clonable handle to one pool slot. The slot returns to the pool when the
/// last clone drops, on whichever thread that happens.
///
/// The count is kept in the pool's per-slot table, so cloning and dropping allocate
/// nothing; the protocol is `Arc`'s (relaxed increment, release decrement, acquire fence
/// before the slot is freed).
pub struct SharedBuf {
    /// One strong count; the last clone's is the slot's credit (see `PoolBuf`).
    pool: ManuallyDrop<Arc<PoolInner>>,
    slot: u32,
    len: u32,
}

impl SharedBuf {
    /// Bytes of data, not counting the header.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when no data is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The header bytes.
    pub fn header(&self) -> &[u8] {
        let h = self.pool.geometry().header_len;
        // SAFETY: inside the slot; shared handles never write, so shared reads cannot race.
        unsafe { std::slice::from_raw_parts(self.data_ptr().sub(h), h) }
    }

    /// The data bytes.
    pub fn data(&self) -> &[u8] {
        self.pool.touch(self.slot, false);
        // SAFETY: inside the slot (`len <= capacity`); read-only while shared.
        unsafe { std::slice::from_raw_parts(self.data_ptr(), self.len()) }
    }

    /// Header and data as one contiguous slice.
    pub fn frame(&self) -> &[u8] {
        let h = self.pool.geometry().header_len;
        // SAFETY: header and data are adjacent inside the slot; read-only while shared.
        unsafe { std::slice::from_raw_parts(self.data_ptr().sub(h), h + self.len()) }
    }

    /// Address of the first data byte.
    pub fn data_ptr(&self) -> *const u8 {
        self.pool.data_ptr(self.slot)
    }

    /// The slot's index in its pool.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Number of live clones (a snapshot; for tests and diagnostics).
    pub fn ref_count(&self) -> u32 {
        // Relaxed: a snapshot.
        self.pool
            .meta(self.slot)
            .shared_refs
            .load(Ordering::Relaxed)
    }

    pub(crate) fn pool(&self) -> &Arc<PoolInner> {
        &self.pool
    }
}

impl Clone for SharedBuf {
    fn clone(&self) -> Self {
        // Relaxed: as `Arc::clone` — a new reference can only be made from an existing
        // one, which keeps the slot alive; no memory needs ordering here.
        let old = self
            .pool
            .meta(self.slot)
            .shared_refs
            .fetch_add(1, Ordering::Relaxed);
        assert!(old < u32::MAX / 2, "SharedBuf refcount overflow");
        SharedBuf {
            pool: ManuallyDrop::new(Arc::clone(&self.pool)),
            slot: self.slot,
            len: self.len,
        }
    }
}

impl Drop for SharedBuf {
    fn drop(&mut self) {
        // Release: our reads of the slot happen-before the decrement. The thread that
        // takes the count to zero then issues an Acquire fence, so every clone's reads
        // happen-before the slot is reused by the next owner.
        if self
            .pool
            .meta(self.slot)
            .shared_refs
            .fetch_sub(1, Ordering::Release)
            != 1
        {
            // SAFETY: dropped once, here: not the last clone, an ordinary reference.
            unsafe { ManuallyDrop::drop(&mut self.pool) };
            return;
        }
        fence(Ordering::Acquire, "shared_buf.drop");
        if !PoolInner::put(&self.pool, self.slot) {
            // SAFETY: dropped once, here; as in `PoolBuf::drop`.
            unsafe { ManuallyDrop::drop(&mut self.pool) };
        }
    }
}

impl fmt::Debug for SharedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBuf")
            .field("slot", &self.slot)
            .field("len", &self.len)
            .field("refs", &self.ref_count())
            .finish()
    }
}

/// A buffer an operation can write from: a unique [`PoolBuf`] (given back in the
/// completion, ready for reuse) or a [`SharedBuf`] clone (forwarding one received buffer
/// to several destinations).
#[derive(Debug)]
pub enum IoBuf {
    /// A unique pooled buffer.
    Pool(PoolBuf),
    /// A shared read-only pooled buffer.
    Shared(SharedBuf),
}

impl IoBuf {
    /// The data bytes.
    pub fn data(&self) -> &[u8] {
        match self {
            IoBuf::Pool(b) => b.data(),
            IoBuf::Shared(b) => b.data(),
        }
    }

    /// Header and data as one slice.
    pub fn frame(&self) -> &[u8] {
        match self {
            IoBuf::Pool(b) => b.frame(),
            IoBuf::Shared(b) => b.frame(),
        }
    }

    pub(crate) fn pool(&self) -> &Arc<PoolInner> {
        match self {
            IoBuf::Pool(b) => b.pool(),
            IoBuf::Shared(b) => b.pool(),
        }
    }

    pub(crate) fn slot(&self) -> u32 {
        match self {
            IoBuf::Pool(b) => b.slot(),
            IoBuf::Shared(b) => b.slot(),
        }
    }

    /// The unique buffer, if this is one.
    pub fn into_pool(self) -> Option<PoolBuf> {
        match self {
            IoBuf::Pool(b) => Some(b),
            IoBuf::Shared(_) => None,
        }
    }
}

impl From<PoolBuf> for IoBuf {
    fn from(b: PoolBuf) -> Self {
        IoBuf::Pool(b)
    }
}

impl From<SharedBuf> for IoBuf {
    fn from(b: SharedBuf) -> Self {
        IoBuf::Shared(b)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::BufferPool;

    #[test]
    fn shared_clones_on_threads_return_slot_once() {
        let pool = BufferPool::builder()
            .slots(2)
            .slot_len(4096)
            .build()
            .unwrap();
        for _ in 0..200 {
            let mut b = pool.try_get().unwrap();
            b.extend_from_slice(b"shared").unwrap();
            let s = b.share();
            let clones: Vec<_> = (0..4).map(|_| s.clone()).collect();
            drop(s);
            let ts: Vec<_> = clones
                .into_iter()
                .map(|c| {
                    std::thread::spawn(move || {
                        assert_eq!(c.data(), b"shared");
                    })
                })
                .collect();
            for t in ts {
                t.join().unwrap();
            }
            assert_eq!(pool.stats().free, 2);
        }
    }

    #[test]
    fn set_len_beyond_capacity_is_typed_error() {
        let pool = BufferPool::builder()
            .slots(1)
            .slot_len(4096)
            .build()
            .unwrap();
        let mut b = pool.try_get().unwrap();
        let e = b.set_len(4097).unwrap_err();
        assert!(matches!(
            e.kind(),
            crate::ErrorKind::BufferTooSmall {
                need: 4097,
                have: 4096
            }
        ));
        assert_eq!(b.len(), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::super::BufferPool;

    /// Two clones dropped on two threads: the slot returns exactly once, and only after
    /// both are gone.
    #[test]
    fn shared_refcount_returns_slot_once() {
        loom::model(|| {
            let pool = BufferPool::builder()
                .slots(1)
                .slot_len(4096)
                .populate(false)
                .build()
                .unwrap();
            let s = pool.try_get().unwrap().share();
            let s2 = s.clone();
            let t = loom::thread::spawn(move || drop(s2));
            drop(s);
            t.join().unwrap();
            assert_eq!(pool.stats().free, 1);
            // The returned slot can be taken again (it was pushed exactly once).
            let b = pool.try_get().unwrap();
            assert!(pool.try_get().is_err());
            drop(b);
        });
    }

    /// Two clones read the slot on two threads and drop; the slot's next owner writes it.
    /// Every read must happen-before that write (loom tracks the slot's bytes through
    /// `PoolInner::touch`).
    fn shared_reads_then_reuse() {
        loom::model(|| {
            let pool = BufferPool::builder()
                .slots(1)
                .slot_len(4096)
                .populate(false)
                .build()
                .unwrap();
            let s = pool.try_get().unwrap().share();
            let s2 = s.clone();
            // The next owner, started first so that only the free list can order it
            // after the readers (a spawn would carry the spawner's whole history).
            let p2 = pool.clone();
            let next = loom::thread::spawn(move || {
                if let Ok(mut b) = p2.try_get() {
                    b.capacity_mut()[0] = 1;
                }
            });
            let t = loom::thread::spawn(move || {
                let _ = s2.data();
                drop(s2);
            });
            let _ = s.data();
            drop(s);
            t.join().unwrap();
            next.join().unwrap();
        });
    }

    #[test]
    fn shared_reads_happen_before_the_slot_is_reused() {
        shared_reads_then_reuse();
    }

    /// Mutation: without the Acquire fence after the last decrement, the other clone's
    /// read does not happen-before the next owner's write: loom reports the race.
    #[test]
    #[should_panic(expected = "Causality violation")]
    fn without_the_drop_fence_a_read_races_the_next_owner() {
        crate::sync::mutation::without_fence("shared_buf.drop", shared_reads_then_reuse);
    }

    /// A slot returned on one thread while another takes: the taker gets it or sees
    /// exhaustion, never the same slot twice.
    #[test]
    fn free_list_take_and_return_race() {
        loom::model(|| {
            let pool = BufferPool::builder()
                .slots(1)
                .slot_len(4096)
                .populate(false)
                .build()
                .unwrap();
            let b = pool.try_get().unwrap();
            let p2 = pool.clone();
            let t = loom::thread::spawn(move || p2.try_get().ok().map(|b| b.slot()));
            drop(b);
            let _ = t.join().unwrap();
            assert_eq!(pool.stats().free, 1);
        });
    }
}
