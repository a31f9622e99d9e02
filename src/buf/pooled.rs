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
/// ownership *is* the reference, with nothing to take or release by hand.
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
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;
